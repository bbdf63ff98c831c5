/**
 * What MedMNIST v2 publishes about its 2D datasets (Yang et al., Scientific Data 2023): the task of each
 * set and the meaning of every label index. Used to name classes when a `.npz` file is opened; a file
 * whose name matches no entry gets classes '0', '1', … and a task read off the label array's shape.
 */
import type { TaskType } from './dataset.ts';

export interface MedmnistInfo {
  readonly name: string;
  /** MedMNIST's own task description; ordinal regression is trained as multiclass in melo. */
  readonly task: 'binary-class' | 'multi-class' | 'ordinal-regression' | 'multi-label, binary-class';
  readonly taskType: TaskType;
  readonly modality: string;
  readonly classes: readonly string[];
}

const info = (
  name: string,
  task: MedmnistInfo['task'],
  modality: string,
  classes: readonly string[],
): MedmnistInfo => ({
  name,
  task,
  taskType: task === 'binary-class' ? 'binary' : task.startsWith('multi-label') ? 'multilabel' : 'multiclass',
  modality,
  classes,
});

const ORGAN_CLASSES = [
  'bladder',
  'femur-left',
  'femur-right',
  'heart',
  'kidney-left',
  'kidney-right',
  'liver',
  'lung-left',
  'lung-right',
  'pancreas',
  'spleen',
];

export const MEDMNIST_INFO: Readonly<Record<string, MedmnistInfo>> = {
  pathmnist: info('pathmnist', 'multi-class', 'colon pathology', [
    'adipose',
    'background',
    'debris',
    'lymphocytes',
    'mucus',
    'smooth muscle',
    'normal colon mucosa',
    'cancer-associated stroma',
    'colorectal adenocarcinoma epithelium',
  ]),
  chestmnist: info('chestmnist', 'multi-label, binary-class', 'chest X-ray', [
    'atelectasis',
    'cardiomegaly',
    'effusion',
    'infiltration',
    'mass',
    'nodule',
    'pneumonia',
    'pneumothorax',
    'consolidation',
    'edema',
    'emphysema',
    'fibrosis',
    'pleural',
    'hernia',
  ]),
  dermamnist: info('dermamnist', 'multi-class', 'dermatoscope', [
    'actinic keratoses and intraepithelial carcinoma',
    'basal cell carcinoma',
    'benign keratosis-like lesions',
    'dermatofibroma',
    'melanoma',
    'melanocytic nevi',
    'vascular lesions',
  ]),
  octmnist: info('octmnist', 'multi-class', 'retinal OCT', [
    'choroidal neovascularization',
    'diabetic macular edema',
    'drusen',
    'normal',
  ]),
  pneumoniamnist: info('pneumoniamnist', 'binary-class', 'chest X-ray', ['normal', 'pneumonia']),
  retinamnist: info('retinamnist', 'ordinal-regression', 'fundus camera', ['0', '1', '2', '3', '4']),
  breastmnist: info('breastmnist', 'binary-class', 'breast ultrasound', ['malignant', 'normal, benign']),
  bloodmnist: info('bloodmnist', 'multi-class', 'blood cell microscope', [
    'basophil',
    'eosinophil',
    'erythroblast',
    'immature granulocytes (myelocytes, metamyelocytes and promyelocytes)',
    'lymphocyte',
    'monocyte',
    'neutrophil',
    'platelet',
  ]),
  tissuemnist: info('tissuemnist', 'multi-class', 'kidney cortex microscope', [
    'Collecting Duct, Connecting Tubule',
    'Distal Convoluted Tubule',
    'Glomerular endothelial cells',
    'Interstitial endothelial cells',
    'Leukocytes',
    'Podocytes',
    'Proximal Tubule Segments',
    'Thick Ascending Limb',
  ]),
  organamnist: info('organamnist', 'multi-class', 'abdominal CT (axial)', ORGAN_CLASSES),
  organcmnist: info('organcmnist', 'multi-class', 'abdominal CT (coronal)', ORGAN_CLASSES),
  organsmnist: info('organsmnist', 'multi-class', 'abdominal CT (sagittal)', ORGAN_CLASSES),
};

/**
 * The MedMNIST set a file name refers to: the known name it starts with, followed by the end or '_'
 * (so 'breastmnist_64.npz' and 'pathmnist_test_subset.npz' are recognised).
 */
export function medmnistInfoForFile(fileName: string): MedmnistInfo | undefined {
  const base = fileName
    .replace(/^.*[\\/]/, '')
    .replace(/\.npz$/i, '')
    .toLowerCase();
  for (const entry of Object.values(MEDMNIST_INFO)) {
    if (base === entry.name || base.startsWith(`${entry.name}_`)) return entry;
  }
  return undefined;
}
