/**
 * A list of class names that reads the same however the names are spelled: each one quoted, so that
 * BreastMNIST's `normal, benign` is one class, not two (`3 classes` would otherwise read as 3 names).
 */
export function formatLabels(labels: readonly string[]): string {
  return `${labels.length} ${labels.length === 1 ? 'class' : 'classes'}: ${labels.map((label) => JSON.stringify(label)).join(', ')}`;
}
