/** Renders a Vega-Lite specification to an SVG string in Node (no browser, no canvas, no network). */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export async function renderVegaLiteSvg(spec: TopLevelSpec): Promise<string> {
  // Only errors are logged: Vega-Lite's warnings would otherwise land on the CLI's stderr.
  const { spec: compiled } = compile(spec, { logger: vega.logger(vega.Error) });
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', logLevel: vega.Error });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
