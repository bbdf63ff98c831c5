/** dcmjs ships JavaScript only; melo uses its naturalised data sets and Part 10 writer. */
declare module 'dcmjs' {
  type Naturalized = Record<string, unknown>;
  interface DicomDictInstance {
    meta: Record<string, unknown>;
    dict: Record<string, unknown>;
    write(options?: Record<string, unknown>): ArrayBuffer;
  }
  const dcmjs: {
    data: {
      DicomDict: new (meta: Record<string, unknown>) => DicomDictInstance;
      DicomMessage: {
        readFile(
          buffer: ArrayBuffer,
          options?: Record<string, unknown>,
        ): { meta: Record<string, unknown>; dict: Record<string, unknown> };
      };
      DicomMetaDictionary: {
        naturalizeDataset(dataset: Record<string, unknown>): Naturalized;
        denaturalizeDataset(dataset: Naturalized): Record<string, unknown>;
      };
    };
    log: { setLevel(level: string): void };
  };
  export default dcmjs;
}

/** xhr2: an XMLHttpRequest for Node, handed to dicomweb-client per request (it has no Node transport). */
declare module 'xhr2' {
  const XMLHttpRequest: new () => XMLHttpRequest;
  export default XMLHttpRequest;
}
