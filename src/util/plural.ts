/** "1 epoch", "3 epochs", "1,000 steps": a count with its noun in the right number (en-US digits). */
export function plural(count: number, singular: string, pluralForm = `${singular}s`): string {
  return `${count.toLocaleString('en-US')} ${count === 1 ? singular : pluralForm}`;
}
