"""Write a synthetic detection dataset (COCO format).

    python tools/misc/make_shapes_dataset.py --out-dir data/shapes
    # the harder task: classes told apart by a key elsewhere in the image
    python tools/misc/make_shapes_dataset.py --task context \\
        --out-dir data/shapes_context

Nothing is rewritten when ``out_dir`` already holds a dataset made with the
same parameters.
"""
import argparse
import os.path as osp
import sys

try:
    from mmdet_ela.datasets import TASKS, make_shapes_dataset
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0,
                    osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
    from mmdet_ela.datasets import TASKS, make_shapes_dataset

# where configs/shapes/ look for each task's data
DEFAULT_DIRS = {'shapes': 'data/shapes', 'context': 'data/shapes_context'}


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Make a synthetic detection dataset')
    parser.add_argument(
        '--out-dir',
        default=None,
        help='dataset root (default: data/shapes, or data/shapes_context '
        'for --task context: where the configs look)')
    parser.add_argument(
        '--num-train', type=int, default=400, help='training images')
    parser.add_argument(
        '--num-val', type=int, default=100, help='validation images')
    parser.add_argument(
        '--img-size', type=int, default=160, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='base seed (>= 0)')
    parser.add_argument(
        '--task',
        choices=sorted(TASKS),
        default='shapes',
        help='shapes (4 classes) or context (6 classes told apart by a key '
        'elsewhere in the image, with clutter and occlusion)')
    parser.add_argument(
        '--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args()


def main() -> None:
    """Make the dataset and print where it is."""
    args = parse_args()
    out_dir = args.out_dir or DEFAULT_DIRS[args.task]
    paths = make_shapes_dataset(
        out_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        img_size=args.img_size,
        seed=args.seed,
        progress=not args.no_progress,
        task=args.task)
    print(f'{args.task} dataset in {paths["root"]}')
    for key in ('train_img_dir', 'train_ann', 'val_img_dir', 'val_ann',
                'meta'):
        print(f'  {key:14s} {paths[key]}')


if __name__ == '__main__':
    main()
