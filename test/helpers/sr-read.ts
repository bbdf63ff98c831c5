import dcmjs from 'dcmjs';

/** One task's results as read back from a melo SR. */
export interface SrTaskReading {
  readonly task: string;
  readonly findings: string[];
  readonly probabilities: Map<string, number>;
  readonly adapterFingerprint: string | undefined;
  readonly backboneFingerprint: string | undefined;
}

type Item = Record<string, unknown>;
const name = (item: Item) =>
  ((item.ConceptNameCodeSequence as Item[] | Item | undefined) ?? []) as Item[] | Item;
const meaning = (item: Item): string => {
  const sequence = name(item);
  const first = Array.isArray(sequence) ? sequence[0] : sequence;
  return String(first?.CodeMeaning ?? '');
};
const children = (item: Item): Item[] => {
  const content = item.ContentSequence as Item[] | Item | undefined;
  return content === undefined ? [] : Array.isArray(content) ? content : [content];
};
const single = <T>(value: T | T[] | undefined): T | undefined => (Array.isArray(value) ? value[0] : value);

/** Reads a melo SR (Part 10 bytes) with dcmjs, independently of the writer's own data structures. */
export function readMeloSr(bytes: Uint8Array): { dataset: Item; tasks: SrTaskReading[] } {
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
  const file = dcmjs.data.DicomMessage.readFile(buffer);
  const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(file.dict) as Item;
  const measurements = children(dataset).find((item) => meaning(item) === 'Imaging Measurements');
  const tasks = (measurements ? children(measurements) : []).map((group): SrTaskReading => {
    const items = children(group);
    const textOf = (what: string) =>
      items.find((item) => meaning(item) === what)?.TextValue as string | undefined;
    const probabilities = new Map<string, number>();
    for (const item of items.filter((entry) => entry.ValueType === 'NUM')) {
      const measured = single(item.MeasuredValueSequence as Item | Item[]);
      probabilities.set(meaning(item).replace(/^Probability of /, ''), Number(measured?.NumericValue));
    }
    return {
      task: textOf('Tracking Identifier') ?? '',
      findings: items
        .filter((item) => meaning(item) === 'Finding')
        .map((item) => String(single(item.ConceptCodeSequence as Item | Item[])?.CodeMeaning ?? '')),
      probabilities,
      adapterFingerprint: textOf('Adapter fingerprint'),
      backboneFingerprint: textOf('Backbone fingerprint'),
    };
  });
  return { dataset, tasks };
}
