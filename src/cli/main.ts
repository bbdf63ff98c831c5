import { Command, CommanderError } from 'commander';
import { errorMessage } from '../errors.ts';
import { registerAdapterCommand } from './commands/adapter.ts';
import { registerDataCommand } from './commands/data.ts';
import { registerDemoCommand } from './commands/demo.ts';
import { registerEvalCommand } from './commands/eval.ts';
import { registerExportOnnxCommand } from './commands/export-onnx.ts';
import { registerPredictCommand } from './commands/predict.ts';
import { registerPullCommand } from './commands/pull.ts';
import { registerServeCommand } from './commands/serve.ts';
import { registerStudyCommand } from './commands/study.ts';
import { registerTrainCommand } from './commands/train.ts';

/**
 * The `melo` command. Each sub-command lives in its own file under `commands/` and registers itself here.
 * Errors reach the user as one line on stderr; `--verbose` adds the stack.
 */
export function buildProgram(): Command {
  const program = new Command('melo')
    .description('MeLo: frozen ViT backbones with tiny LoRA adapters per medical imaging task')
    .option('--verbose', 'print stack traces on errors')
    .exitOverride()
    .showHelpAfterError(false)
    .configureOutput({ outputError: (text, write) => write(`melo: ${text.replace(/^error: /, 'error: ')}`) });
  registerPredictCommand(program);
  registerTrainCommand(program);
  registerEvalCommand(program);
  registerServeCommand(program);
  registerDataCommand(program);
  registerAdapterCommand(program);
  registerExportOnnxCommand(program);
  registerPullCommand(program);
  registerDemoCommand(program);
  registerStudyCommand(program);
  for (const command of program.commands) command.exitOverride();
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    // A command may set an exit status of its own (e.g. 130 after Ctrl-C) without throwing.
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode;
    const verbose = argv.includes('--verbose');
    process.stderr.write(`melo: error: ${errorMessage(error)}\n`);
    if (verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
    return 1;
  }
}

const isEntry = process.argv[1] !== undefined && /(?:main\.ts|melo(?:\.js)?)$/.test(process.argv[1]);
if (isEntry || process.env.MELO_CLI === '1') {
  process.exitCode = await main(process.argv.slice(2));
}
