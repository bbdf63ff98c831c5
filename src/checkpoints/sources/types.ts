import type { ViTWeights } from '../../model/weights.ts';

export interface ConvertedCheckpoint {
  readonly weights: ViTWeights;
  /** canonical name → the name in the checkpoint file, so errors speak the user's names. */
  readonly sourceNames: Map<string, string>;
  /** Tensors in the file that the converter did not recognise. */
  readonly unexpected: string[];
}
