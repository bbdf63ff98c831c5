/** Renders a Vega-Lite specification to an SVG string in Node (no browser, no canvas, no network). */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export interface SvgOptions {
  /**
   * Prefix for the SVG's element ids (clip paths, gradients). Vega numbers them from 1 in every view, so
   * several SVGs inlined in one page need distinct prefixes or their `url(#…)` references collide.
   */
  idPrefix?: string;
}

export async function renderVegaLiteSvg(spec: TopLevelSpec, options: SvgOptions = {}): Promise<string> {
  // Only errors are logged: Vega-Lite's warnings would otherwise land on the CLI's stderr.
  const { spec: compiled } = compile(spec, { logger: vega.logger(vega.Error) });
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', logLevel: vega.Error });
  let svg: string;
  try {
    svg = await view.toSVG();
  } finally {
    view.finalize();
  }
  const prefix = options.idPrefix;
  if (prefix === undefined) return svg;
  return svg
    .replace(/\bid="([^"]+)"/g, (_, id: string) => `id="${prefix}${id}"`)
    .replace(/url\(#([^)]+)\)/g, (_, id: string) => `url(#${prefix}${id})`)
    .replace(/href="#([^"]+)"/g, (_, id: string) => `href="#${prefix}${id}"`);
}
