/** What a compressed-frame codec hands back, before the header's bit layout is applied. */
export interface CodecOutput {
  readonly width: number;
  readonly height: number;
  readonly components: number;
  /** Decoded samples; pixel-interleaved unless `planar`. */
  readonly words: ArrayLike<number>;
  /** The codec produced two's complement values itself (J2K signed components), so no sign extension. */
  readonly signed: boolean;
  /** Components stored plane after plane (JPEG-LS interleave mode 'none'). */
  readonly planar: boolean;
  /**
   * The codec itself turned colour components into RGB (libjpeg's YCbCr conversion, the J2K
   * multi-component transform), so a YBR photometric interpretation no longer applies.
   */
  readonly rgb: boolean;
}
