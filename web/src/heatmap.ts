import { interpolateTurbo } from 'd3-scale-chromatic';
import type { Explanation } from './api.ts';

/** [r, g, b] of the colour map at t in [0, 1]. */
function colour(t: number): [number, number, number] {
  const match = /rgb\((\d+), (\d+), (\d+)\)/.exec(interpolateTurbo(t));
  return match ? [Number(match[1]), Number(match[2]), Number(match[3])] : [0, 0, 0];
}

/** 256-step lookup table, so drawing never parses colour strings per cell. */
const LUT: readonly [number, number, number][] = Array.from({ length: 256 }, (_, i) => colour(i / 255));

/**
 * The heatmap at patch resolution: colour from the map, opacity rising with attention so that
 * unattended regions leave the image visible.
 */
function patchImage(explanation: Explanation, opacity: number): HTMLCanvasElement {
  const [rows, columns] = explanation.grid;
  const cells = document.createElement('canvas');
  cells.width = columns;
  cells.height = rows;
  const context = cells.getContext('2d')!;
  const pixels = context.createImageData(columns, rows);
  explanation.heatmap.forEach((value, i) => {
    const v = Math.min(1, Math.max(0, value));
    const [r, g, b] = LUT[Math.round(v * 255)]!;
    pixels.data.set([r, g, b, Math.round(255 * opacity * (0.15 + 0.85 * v))], i * 4);
  });
  context.putImageData(pixels, 0, 0);
  return cells;
}

/**
 * Draws the heatmap over `canvas`, which covers the displayed image exactly: the patch grid is stretched
 * (bilinear) over the region the model saw, the rest of the picture stays clear.
 */
export function drawHeatmap(canvas: HTMLCanvasElement, explanation: Explanation, opacity: number): void {
  const scale = window.devicePixelRatio || 1;
  const { width, height } = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  const context = canvas.getContext('2d')!;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = 'high';
  const { region } = explanation;
  context.drawImage(
    patchImage(explanation, opacity),
    region.x * canvas.width,
    region.y * canvas.height,
    region.width * canvas.width,
    region.height * canvas.height,
  );
}

export function clearHeatmap(canvas: HTMLCanvasElement): void {
  canvas.getContext('2d')?.clearRect(0, 0, canvas.width, canvas.height);
}

/** The colour map as a CSS gradient, for the legend. */
export function legendGradient(): string {
  const stops = Array.from({ length: 11 }, (_, i) => interpolateTurbo(i / 10));
  return `linear-gradient(to right, ${stops.join(', ')})`;
}
