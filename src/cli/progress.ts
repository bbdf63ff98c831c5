import type { TrainEvent } from '../train/trainer.ts';
import { plural } from '../util/plural.ts';

/**
 * Training progress on stderr: a live bar with loss, learning rate, images/s and ETA on a TTY, plain
 * log lines otherwise (every `every` steps and at each epoch), so stdout stays clean for --json.
 */
export function progressReporter(
  stream: NodeJS.WriteStream = process.stderr,
  every = 10,
): (event: TrainEvent) => void {
  const tty = stream.isTTY === true;
  let total = 0;
  return (event) => {
    switch (event.type) {
      case 'start':
        total = event.totalSteps;
        stream.write(
          `training ${event.trainable.toLocaleString('en-US')} parameters for ${plural(event.epochs, 'epoch')}, ${plural(total, 'step')}${event.resumed ? ` (resumed at step ${event.step})` : ''}\n`,
        );
        break;
      case 'step': {
        const eta =
          event.step > 0 ? (event.elapsedSeconds / event.step) * (event.totalSteps - event.step) : 0;
        const text = `epoch ${event.epoch + 1} step ${event.step}/${event.totalSteps} loss ${event.loss.toFixed(4)} lr ${event.lr.toExponential(2)} ${event.imagesPerSecond.toFixed(1)} img/s ETA ${formatSeconds(eta)}`;
        if (tty) {
          const width = 24;
          const filled = Math.round((event.step / Math.max(1, total)) * width);
          stream.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}\u001b[K`);
        } else if (event.step % every === 0 || event.step === event.totalSteps) {
          stream.write(`${text}\n`);
        }
        break;
      }
      case 'epoch': {
        const val = event.val
          ? ` val loss ${event.val.loss.toFixed(4)} acc ${event.val.accuracy.toFixed(4)} auc ${event.val.auc === null ? 'n/a' : event.val.auc.toFixed(4)}${event.improved ? ' (best)' : ''}`
          : '';
        stream.write(
          `${tty ? '\r\u001b[K' : ''}epoch ${event.epoch + 1} train loss ${event.trainLoss.toFixed(4)}${val} ${event.seconds.toFixed(1)} s\n`,
        );
        break;
      }
      case 'interrupted':
        stream.write(
          `${tty ? '\n' : ''}interrupted at step ${event.step}; checkpoint written to ${event.checkpoint}\n`,
        );
        break;
      case 'early-stop':
        stream.write(`early stop after epoch ${event.epoch + 1}: no improvement\n`);
        break;
    }
  };
}

function formatSeconds(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(s % 60).padStart(2, '0')}s`;
}
