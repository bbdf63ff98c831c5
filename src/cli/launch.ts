import type { Command } from 'commander';
import { createRootProgram, runProgram } from './root.ts';

type Register = (program: Command) => void;

interface LauncherEntry {
  /** The one-line description `melo --help` lists (the command's own `.description()`; a test keeps them equal). */
  summary: string;
  load: () => Promise<Register>;
}

/**
 * What `melo` runs. Loading every sub-command pulls in ONNX Runtime, sharp, fastify, vega, … (2–4 s on a
 * loaded 2-core machine even when compiled); the launcher imports only the sub-command named on the
 * command line, so `melo --help` and `melo --version` load commander alone. main.ts's buildProgram()
 * registers all of them (tests and anything that wants the whole program); test/cli-launch.test.ts
 * checks that this table and buildProgram() list the same commands with the same descriptions.
 */
export const LAUNCHER_COMMANDS: Readonly<Record<string, LauncherEntry>> = {
  predict: {
    summary: 'classify images (PNG, JPEG, TIFF, WebP, DICOM) with a backbone and its head or task adapters',
    load: async () => (await import('./commands/predict.ts')).registerPredictCommand,
  },
  embed: {
    summary:
      "print or save a backbone's image embeddings (CLIP/open_clip: projected; DINOv2, ViT: CLS, or --pool cls+mean) for retrieval, clustering and probes",
    load: async () => (await import('./commands/embed.ts')).registerEmbedCommand,
  },
  train: {
    summary: 'train a task: MeLo LoRA adapter (default), full fine-tuning, or linear probing',
    load: async () => (await import('./commands/train.ts')).registerTrainCommand,
  },
  eval: {
    summary:
      'evaluate a task adapter (or the backbone head) on a labelled dataset split: metrics with bootstrap CIs, predictions CSV, HTML report',
    load: async () => (await import('./commands/eval.ts')).registerEvalCommand,
  },
  serve: {
    summary:
      'serve every task adapter in a directory over HTTP: mixed-task dynamic batches on one shared backbone',
    load: async () => (await import('./commands/serve.ts')).registerServeCommand,
  },
  data: {
    summary: 'inspect and download datasets',
    load: async () => (await import('./commands/data.ts')).registerDataCommand,
  },
  adapter: {
    summary: 'inspect, convert and import task adapters',
    load: async () => (await import('./commands/adapter.ts')).registerAdapterCommand,
  },
  'export-onnx': {
    summary:
      'export one task as a plain ONNX model (LoRA merged, standard ops, opset 18): input pixel_values [batch, 3, H, W], output logits; labels and preprocessing in its metadata',
    load: async () => (await import('./commands/export-onnx.ts')).registerExportOnnxCommand,
  },
  pull: {
    summary:
      'download a backbone from the Hugging Face Hub: config.json, preprocessor_config.json and safetensors weights (sharded or not); pickle files are never downloaded',
    load: async () => (await import('./commands/pull.ts')).registerPullCommand,
  },
  pacs: {
    summary: 'work with a DICOMweb PACS: pull, classify, write DICOM SRs',
    load: async () => (await import('./commands/pacs.ts')).registerPacsCommand,
  },
  demo: {
    summary: 'train, evaluate and report MeLo adapters for four medical tasks on the shipped backbone',
    load: async () => (await import('./commands/demo.ts')).registerDemoCommand,
  },
  study: {
    summary:
      'linear probing vs MeLo LoRA vs full fine-tuning on four datasets, several seeds; writes a table',
    load: async () => (await import('./commands/study.ts')).registerStudyCommand,
  },
};

/** The first argument that is not a global option: the sub-command, if any. */
function commandName(argv: readonly string[]): string | undefined {
  return argv.find((arg) => !arg.startsWith('-'));
}

export async function launch(argv: string[]): Promise<number> {
  const name = commandName(argv);
  if (name !== undefined && !Object.hasOwn(LAUNCHER_COMMANDS, name)) {
    // Not in the table (a command added to main.ts only, or a typo): the whole program decides.
    const { buildProgram } = await import('./main.ts');
    return runProgram(buildProgram(), argv);
  }
  const program = createRootProgram();
  if (name !== undefined) {
    (await LAUNCHER_COMMANDS[name]!.load())(program);
  } else {
    // `melo`, `melo --help`, `melo --version`: the list of commands, nothing loaded.
    for (const [command, entry] of Object.entries(LAUNCHER_COMMANDS))
      program.command(command).description(entry.summary);
  }
  return runProgram(program, argv);
}
