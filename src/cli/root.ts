import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { errorMessage } from '../errors.ts';

/** melo's version, from its package.json (two levels up from both src/cli/ and dist/cli/). */
export const MELO_VERSION: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/**
 * The bare `melo` program: global options, version, one-line errors. Sub-commands are registered on it by
 * `buildProgram()` (all of them, main.ts) or by the launcher (only the one being run, launch.ts).
 */
export function createRootProgram(): Command {
  return new Command('melo')
    .description('MeLo: frozen ViT backbones with tiny LoRA adapters per medical imaging task')
    .version(MELO_VERSION, '-V, --version', 'print the version of melo')
    .option('--verbose', 'print stack traces on errors')
    .exitOverride()
    .showHelpAfterError(false)
    .configureOutput({ outputError: (text, write) => write(`melo: ${text.replace(/^error: /, 'error: ')}`) });
}

/** Parses and runs; returns the exit status. Errors reach the user as one line on stderr (`--verbose` adds the stack). */
export async function runProgram(program: Command, argv: string[]): Promise<number> {
  for (const command of program.commands) command.exitOverride();
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
