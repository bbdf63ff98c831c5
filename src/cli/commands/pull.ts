import type { Command } from 'commander';
import { pullBackbone } from '../../io/hub.ts';

export interface PullCommandOutput {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

const processOutput: PullCommandOutput = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/** `melo pull <repo-id>`: a backbone from the Hugging Face Hub, safetensors only. */
export function registerPullCommand(program: Command, output: PullCommandOutput = processOutput): void {
  program
    .command('pull')
    .description(
      'download a backbone from the Hugging Face Hub: config.json, preprocessor_config.json and safetensors weights (sharded or not); pickle files are never downloaded',
    )
    .argument('<repo-id>', 'model repository, e.g. google/vit-base-patch16-224-in21k')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('--out <dir>', 'directory to create (default: ./<repo name>)')
    .option(
      '--hub-url <url>',
      'Hub or mirror address (default: $MELO_HUB_URL, $HF_ENDPOINT, https://huggingface.co)',
    )
    .option('--force', 'replace a non-empty --out directory')
    .option('--json', 'print a JSON summary')
    .action(
      async (
        repo: string,
        options: { revision: string; out?: string; hubUrl?: string; force?: boolean; json?: boolean },
      ) => {
        const result = await pullBackbone(repo, {
          revision: options.revision,
          ...(options.out ? { out: options.out } : {}),
          ...(options.hubUrl ? { hubUrl: options.hubUrl } : {}),
          ...(options.force ? { force: true } : {}),
          log: (line) => output.stderr(`${line}\n`),
        });
        if (result.nonCommercial) {
          output.stderr(
            `warning: ${result.repo} is licensed ${result.license}, which forbids commercial use; adapters trained on it inherit that restriction\n`,
          );
        }
        if (options.json) {
          output.stdout(`${JSON.stringify(result)}\n`);
          return;
        }
        const head = result.numClasses > 0 ? `${result.numClasses}-class head` : 'no head';
        const license = result.license ? `licence ${result.license}` : 'licence not stated';
        output.stdout(
          `${result.dir}: ${result.repo}@${result.revision}, ${result.layout} layout, ${head}, ${license}, backbone ${result.fingerprint}\n`,
        );
      },
    );
}
