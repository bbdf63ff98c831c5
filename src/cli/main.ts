import type { Command } from 'commander';
import { registerAdapterCommand } from './commands/adapter.ts';
import { registerDataCommand } from './commands/data.ts';
import { registerDemoCommand } from './commands/demo.ts';
import { registerEmbedCommand } from './commands/embed.ts';
import { registerEvalCommand } from './commands/eval.ts';
import { registerExportOnnxCommand } from './commands/export-onnx.ts';
import { registerPacsCommand } from './commands/pacs.ts';
import { registerPredictCommand } from './commands/predict.ts';
import { registerPullCommand } from './commands/pull.ts';
import { registerServeCommand } from './commands/serve.ts';
import { registerStudyCommand } from './commands/study.ts';
import { registerTrainCommand } from './commands/train.ts';
import { createRootProgram, runProgram } from './root.ts';

/**
 * The `melo` command with every sub-command registered. Each sub-command lives in its own file under
 * `commands/` and registers itself here. The `melo` executable does not load this module: it runs
 * launch.ts, which imports only the sub-command being run (a test checks the two agree).
 */
export function buildProgram(): Command {
  const program = createRootProgram();
  registerPredictCommand(program);
  registerEmbedCommand(program);
  registerTrainCommand(program);
  registerEvalCommand(program);
  registerServeCommand(program);
  registerDataCommand(program);
  registerAdapterCommand(program);
  registerExportOnnxCommand(program);
  registerPullCommand(program);
  registerPacsCommand(program);
  registerDemoCommand(program);
  registerStudyCommand(program);
  for (const command of program.commands) command.exitOverride();
  return program;
}

export async function main(argv: string[]): Promise<number> {
  return runProgram(buildProgram(), argv);
}

const isEntry = process.argv[1] !== undefined && /main\.[jt]s$/.test(process.argv[1]);
if (isEntry || process.env.MELO_CLI === '1') {
  process.exitCode = await main(process.argv.slice(2));
}
