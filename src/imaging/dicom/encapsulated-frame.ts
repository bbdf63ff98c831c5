import dicomParser, { type DataSet, type Element } from 'dicom-parser';
import { MeloError } from '../../errors.ts';
import { parserMessage } from './parse.ts';

/**
 * The compressed bytes of one frame of encapsulated Pixel Data (PS3.5 A.4). With a Basic Offset Table
 * the table says where each frame starts; without one, a single frame is all fragments, and N frames
 * in N fragments are one fragment each; JPEG frames otherwise are found by their end-of-image markers.
 */
export function encapsulatedFrame(
  dataSet: DataSet,
  element: Element,
  frameIndex: number,
  frames: number,
  isJpeg: boolean,
  file: string,
): Uint8Array {
  const fragments = element.fragments ?? [];
  if (fragments.length === 0) {
    throw new MeloError('BAD_DICOM', 'encapsulated Pixel Data has no fragments', { file });
  }
  const offsets = element.basicOffsetTable ?? [];
  try {
    if (offsets.length > 0) {
      if (offsets.length !== frames) {
        throw new MeloError(
          'BAD_DICOM',
          `Basic Offset Table lists ${offsets.length} frames, but Number of Frames is ${frames}`,
          { file },
        );
      }
      return dicomParser.readEncapsulatedImageFrame(dataSet, element, frameIndex);
    }
    if (frames === 1) {
      return dicomParser.readEncapsulatedPixelDataFromFragments(dataSet, element, 0, fragments.length);
    }
    if (fragments.length === frames) {
      return dicomParser.readEncapsulatedPixelDataFromFragments(dataSet, element, frameIndex, 1);
    }
    if (isJpeg) {
      const table = dicomParser.createJPEGBasicOffsetTable(dataSet, element);
      if (table.length !== frames) {
        throw new MeloError('BAD_DICOM', `found ${table.length} JPEG images for ${frames} frames`, { file });
      }
      return dicomParser.readEncapsulatedImageFrame(dataSet, element, frameIndex, table);
    }
  } catch (error) {
    if (error instanceof MeloError) throw error;
    throw new MeloError('BAD_DICOM', `cannot read frame ${frameIndex + 1}: ${parserMessage(error)}`, {
      file,
    });
  }
  throw new MeloError(
    'BAD_DICOM',
    `cannot locate frame ${frameIndex + 1}: ${fragments.length} fragments hold ${frames} frames and there is no Basic Offset Table`,
    { file },
  );
}
