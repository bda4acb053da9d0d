"""Write small synthetic COCO and ADE20K style data sets of simple shapes.

The images show 1 to 4 filled, non-overlapping circles, squares (possibly
rotated) and triangles of random size (12-45% of the image side), position
and colour on a gradient background with a smooth texture and pixel noise.
Each class takes its colours from its own hue range (circles red to orange,
squares green, triangles blue), with random saturation and brightness, drawn
to contrast with the background they cover: colour and geometry both tell
the classes apart, so small models trained from scratch learn the sets in a
few minutes on a CPU. The sets are the bundled demo data for training Mask
R-CNN and UperNet; mmdet's ``CocoDataset`` and mmseg's ``ADE20KDataset``
read them as they are.

Usage:
    python tools/make_toy_data.py [--out-dir data] [--seed 0]
        [--num-train 96] [--num-val 24] [--image-size 128] [--force]

Layout written under ``--out-dir``::

    toy_coco/
        annotations/instances_train2017.json
        annotations/instances_val2017.json
        train2017/000000.jpg ...
        val2017/000000.jpg ...
        toy_data.json
    toy_ade20k/
        images/training/000000.jpg ...
        images/validation/000000.jpg ...
        annotations/training/000000.png ...
        annotations/validation/000000.png ...
        toy_data.json

COCO: categories 1 'circle', 2 'square', 3 'triangle' (supercategory
'shape'); with ``metainfo=dict(classes=('circle', 'square', 'triangle'))``
mmdet's labels are 0, 1, 2. Each instance has one polygon (circles: 24-32
vertices), its tight ``bbox`` and its polygon ``area``. Image ids start at 1
and image ``i`` is stored as ``{i - 1:06d}.jpg``. The pixels of a shape are
exactly the pixels that pycocotools rasterises from the stored polygon,
which is what mmdet's ``LoadAnnotations`` decodes.

ADE20K: single-channel uint8 PNG labels, never 0 (ADE20K's "other"), read
with ``reduce_zero_label=True``:

    ====================  ==========  =====================  ================
    pixels                PNG value   class after reduction  ADE20K name
    ====================  ==========  =====================  ================
    background            1           0                      wall
    circle                2           1                      building
    square                3           2                      sky
    triangle              4           3                      floor
    ====================  ==========  =====================  ================

A model for it has ``num_classes=4``. To evaluate only these four classes
pass ``metainfo=dict(classes=('wall', 'building', 'sky', 'floor'))``: mmseg
accepts only ADE20K's own names there, and these map onto themselves.

Each set records its parameters in ``toy_data.json``. An existing set with
the same parameters is left alone; one with other parameters is only
regenerated with ``--force``, and then only the files this tool writes are
removed. A folder that is not empty and has no marker is never touched.
The same arguments always give byte-identical files (JPEG quality 95
without chroma subsampling, so colour edges stay on the mask borders).
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

FORMAT_VERSION = 2
MARKER = 'toy_data.json'
CLASSES = ('circle', 'square', 'triangle')
ADE_BACKGROUND = 1  # PNG label of the background; shape k gets k + 2
MIN_IMAGE_SIZE = 64
JPEG_QUALITY = 95
SIZE_RANGE = (0.12, 0.45)  # shape size as a fraction of the image side
MAX_SHAPES = 4
PLACEMENT_TRIES = 50
SHAPE_GAP = 2  # pixels kept free between two shapes
MIN_CONTRAST = 120.0  # RGB distance of a shape to the background it covers
# Hue ranges in degrees of circles, squares and triangles.
CLASS_HUES = ((-20.0, 30.0), (90.0, 150.0), (200.0, 260.0))
COLOUR_CANDIDATES = 32
NOISE_STD = 5.0
COCO_SPLITS = ('train2017', 'val2017')
ADE_SPLITS = ('training', 'validation')
OWN_FILE = re.compile(r'\d{6}\.(jpg|png)')  # names of written images/labels


class ToyDataError(Exception):
    """A target folder cannot be (re)written or the parameters are bad."""


class Shape(NamedTuple):
    """A shape placed in an image."""
    label: int  # index into CLASSES
    polygon: np.ndarray  # (N, 2) vertices x, y
    mask: np.ndarray  # (H, W) bool, rasterised from ``polygon``


# --------------------------------------------------------------- drawing


def shape_polygon(rng: np.random.Generator, label: int,
                  size: float) -> np.ndarray:
    """Vertices (N, 2) of a shape centred on the origin. ``size`` is the
    diameter of a circle and the side of a square (rotated at random); the
    circle through a triangle's vertices has diameter ``1.2 * size``."""
    if label == 0:
        angles = rng.uniform(0, 2 * np.pi) + np.linspace(
            0, 2 * np.pi, rng.integers(24, 33), endpoint=False)
        radius = size / 2
    elif label == 1:
        corners = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        angles = rng.uniform(0, np.pi / 2) + corners
        radius = size / np.sqrt(2)
    else:
        # Arcs between the vertices of at least 60 degrees keep every
        # interior angle between 30 and 120 degrees.
        arcs = np.pi / 3 + np.pi * rng.dirichlet(np.ones(3))
        angles = rng.uniform(0, 2 * np.pi) + np.cumsum(arcs)
        radius = 0.6 * size
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def rasterise(polygon: np.ndarray, image_size: int) -> np.ndarray:
    """Boolean mask of a polygon, rasterised as pycocotools (and so mmdet)
    does it."""
    rles = mask_utils.frPyObjects([polygon.ravel().tolist()], image_size,
                                  image_size)
    return mask_utils.decode(rles)[..., 0].astype(bool)


def place_shape(rng: np.random.Generator, image_size: int,
                occupied: np.ndarray) -> Optional[Shape]:
    """Draw a random shape and try random positions until it is inside the
    image and keeps ``SHAPE_GAP`` pixels from ``occupied``; None if no try
    fits."""
    label = int(rng.integers(len(CLASSES)))
    size = rng.uniform(*SIZE_RANGE) * image_size
    outline = shape_polygon(rng, label, size)
    low = 1 - outline.min(axis=0)
    high = image_size - 1 - outline.max(axis=0)
    for _ in range(PLACEMENT_TRIES):
        polygon = np.round(outline + rng.uniform(low, high), 2)
        mask = rasterise(polygon, image_size)
        if mask.any() and not (mask & occupied).any():
            return Shape(label, polygon, mask)
    return None


def background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Float RGB image: a linear gradient between two colours in a random
    direction plus a smooth random texture."""
    start = rng.uniform(30, 225, size=3)
    end = np.clip(start + rng.uniform(-60, 60, size=3), 0, 255)
    direction = rng.uniform(0, 2 * np.pi)
    coords = np.linspace(-0.5, 0.5, image_size)
    ramp = (np.cos(direction) * coords[None, :] +
            np.sin(direction) * coords[:, None]) / np.sqrt(0.5) + 0.5
    image = start + ramp[..., None] * (end - start)
    coarse = rng.normal(0, 12, size=(6, 6, 3)).astype(np.float32)
    texture = cv2.resize(
        coarse, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    return image + texture


def class_colours(rng: np.random.Generator, label: int) -> np.ndarray:
    """(COLOUR_CANDIDATES, 3) random RGB colours in ``label``'s hue range."""
    hsv = np.stack([
        rng.uniform(*CLASS_HUES[label], size=COLOUR_CANDIDATES) % 360,
        rng.uniform(0.55, 1.0, size=COLOUR_CANDIDATES),
        rng.uniform(0.45, 1.0, size=COLOUR_CANDIDATES),
    ],
                   axis=1).astype(np.float32)
    rgb = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    return rgb.astype(np.float64) * 255


def contrasting_colour(rng: np.random.Generator, label: int,
                       under: np.ndarray) -> np.ndarray:
    """A colour of ``label``'s hue range at least ``MIN_CONTRAST`` away from
    the mean of the pixels ``under`` (N, 3) it will cover, or the farthest of
    the drawn candidates."""
    candidates = class_colours(rng, label)
    distance = np.linalg.norm(candidates - under.mean(axis=0), axis=1)
    far = distance >= MIN_CONTRAST
    return candidates[far.argmax() if far.any() else distance.argmax()]


def draw_scene(rng: np.random.Generator,
               image_size: int) -> Tuple[np.ndarray, List[Shape]]:
    """A uint8 RGB image with 1 to ``MAX_SHAPES`` shapes and the shapes."""
    image = background(rng, image_size)
    occupied = np.zeros((image_size, image_size), bool)
    gap_kernel = np.ones((2 * SHAPE_GAP + 1, 2 * SHAPE_GAP + 1), np.uint8)
    shapes = []
    for _ in range(rng.integers(1, MAX_SHAPES + 1)):
        shape = place_shape(rng, image_size, occupied)
        if shape is None:
            continue
        image[shape.mask] = contrasting_colour(rng, shape.label,
                                               image[shape.mask])
        occupied |= cv2.dilate(shape.mask.astype(np.uint8), gap_kernel) > 0
        shapes.append(shape)
    image += rng.normal(0, NOISE_STD, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), shapes


def write_jpg(path: Path, image: np.ndarray) -> None:
    """Writes an RGB image as JPEG with a fixed quality and without chroma
    subsampling, which would smear colour edges past the masks."""
    cv2.imwrite(
        str(path), image[..., ::-1], [
            cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
        ])


# ----------------------------------------------------------------- sets


def polygon_area(polygon: np.ndarray) -> float:
    """Shoelace formula."""
    x, y = polygon[:, 0], polygon[:, 1]
    twice = np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))
    return float(abs(twice) / 2)


def coco_annotation(shape: Shape, ann_id: int, image_id: int) -> dict:
    x1, y1 = shape.polygon.min(axis=0)
    x2, y2 = shape.polygon.max(axis=0)
    """A COCO instance annotation with one polygon and its tight box."""
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=shape.label + 1,
        segmentation=[shape.polygon.ravel().tolist()],
        bbox=[
            float(x1),
            float(y1),
            round(float(x2 - x1), 2),
            round(float(y2 - y1), 2)
        ],
        area=round(polygon_area(shape.polygon), 2),
        iscrowd=0)


def write_coco_split(root: Path, split: int, num_images: int, image_size: int,
                     rng: np.random.Generator) -> str:
    """Images and instances file of one COCO split; returns a summary."""
    name = COCO_SPLITS[split]
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, shapes = draw_scene(rng, image_size)
        file_name = f'{index:06d}.jpg'
        write_jpg(root / name / file_name, image)
        images.append(
            dict(
                id=index + 1,
                file_name=file_name,
                height=image_size,
                width=image_size))
        annotations += [
            coco_annotation(shape,
                            len(annotations) + k + 1, index + 1)
            for k, shape in enumerate(shapes)
        ]
    coco = dict(
        info=dict(
            description='toy shapes (tools/make_toy_data.py)',
            version=str(FORMAT_VERSION)),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[
            dict(id=k + 1, name=c, supercategory='shape')
            for k, c in enumerate(CLASSES)
        ])
    ann_file = root / 'annotations' / f'instances_{name}.json'
    ann_file.write_text(json.dumps(coco))
    counts = np.bincount([a['category_id'] - 1 for a in annotations],
                         minlength=len(CLASSES))
    per_class = ', '.join(f'{c} {n}' for c, n in zip(CLASSES, counts))
    return (f'{root / name}: {num_images} images, {len(annotations)} '
            f'instances ({per_class}); {ann_file}')


def write_ade20k_split(root: Path, split: int, num_images: int,
                       image_size: int, rng: np.random.Generator) -> str:
    """Images and label maps of one ADE20K split; returns a summary."""
    name = ADE_SPLITS[split]
    image_dir = root / 'images' / name
    label_dir = root / 'annotations' / name
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros(len(CLASSES) + 1, np.int64)
    for index in range(num_images):
        image, shapes = draw_scene(rng, image_size)
        label = np.full((image_size, image_size), ADE_BACKGROUND, np.uint8)
        for shape in shapes:
            label[shape.mask] = ADE_BACKGROUND + 1 + shape.label
        write_jpg(image_dir / f'{index:06d}.jpg', image)
        cv2.imwrite(str(label_dir / f'{index:06d}.png'), label)
        pixels += np.bincount(
            label.ravel() - ADE_BACKGROUND, minlength=len(pixels))
    shares = ', '.join(f'{c} {100 * n / pixels.sum():.1f}%'
                       for c, n in zip(('background', ) + CLASSES, pixels))
    return (f'{image_dir}, {label_dir}: {num_images} images, '
            f'pixels {shares}')


SplitWriter = Callable[[Path, int, int, int, np.random.Generator], str]
# name -> (writer of one split, paths the tool writes, relative to the set)
DATASETS: Dict[str, Tuple[SplitWriter, Tuple[str, ...]]] = {
    'coco': (write_coco_split, ('annotations/instances_train2017.json',
                                'annotations/instances_val2017.json',
                                'annotations', 'train2017', 'val2017')),
    'ade20k': (write_ade20k_split,
               ('images/training', 'images/validation', 'annotations/training',
                'annotations/validation', 'images', 'annotations')),
}

# --------------------------------------------------------------- marker


def read_marker(root: Path) -> dict:
    """The marker's content; empty if it cannot be parsed."""
    try:
        return json.loads((root / MARKER).read_text())
    except ValueError:
        return {}


def needs_writing(root: Path, params: dict, force: bool) -> bool:
    """Whether ``root`` must be (re)generated; raises ToyDataError if it
    must not be touched."""
    if not root.exists():
        return True
    if not root.is_dir():
        raise ToyDataError(f'{root} exists and is not a folder')
    if not (root / MARKER).is_file():
        if any(root.iterdir()):
            raise ToyDataError(
                f'{root} exists but was not written by this tool (it has no '
                f'{MARKER}); refusing to touch it. Move it away or choose '
                'another --out-dir')
        return True
    marker = read_marker(root)
    if marker.get('params') == params:
        # An interrupted run (incomplete marker) is simply redone.
        return not marker.get('complete', False)
    if not force:
        raise ToyDataError(
            f'{root} was generated with other parameters '
            f'({marker.get("params")}, now {params}); pass --force to '
            'regenerate it')
    return True


def remove_own_files(root: Path, own_paths: Sequence[str]) -> None:
    """Removes the marker and, in order, the files and folders this tool
    writes; a folder is kept if something else is left in it."""
    (root / MARKER).unlink(missing_ok=True)
    for relative in own_paths:
        path = root / relative
        if path.is_file():
            path.unlink()
        elif path.is_dir():
            for item in path.iterdir():
                if item.is_file() and OWN_FILE.fullmatch(item.name):
                    item.unlink()
            if not any(path.iterdir()):
                path.rmdir()


def write_marker(root: Path, params: dict, complete: bool) -> None:
    (root / MARKER).write_text(
        json.dumps(dict(params=params, complete=complete), indent=2) + '\n')


# ------------------------------------------------------------------ api


def make_toy_data(out_dir: Path,
                  seed: int = 0,
                  num_train: int = 96,
                  num_val: int = 24,
                  image_size: int = 128,
                  force: bool = False) -> List[str]:
    """Writes ``out_dir/toy_coco`` and ``out_dir/toy_ade20k`` where needed.

    Returns one summary line per split written (none when both sets are
    up to date). Raises ToyDataError, before writing anything, if a folder
    is not the tool's, or has other parameters and ``force`` is not set.
    """
    if seed < 0 or num_train < 1 or num_val < 1 or \
            image_size < MIN_IMAGE_SIZE:
        raise ToyDataError('--seed must be at least 0, --num-train and '
                           '--num-val at least 1 and --image-size at least '
                           f'{MIN_IMAGE_SIZE}')
    todo = []
    for set_index, name in enumerate(DATASETS):
        root = Path(out_dir) / f'toy_{name}'
        params = dict(
            format_version=FORMAT_VERSION,
            dataset=name,
            seed=seed,
            num_train=num_train,
            num_val=num_val,
            image_size=image_size)
        if needs_writing(root, params, force):
            todo.append((set_index, name, root, params))
        else:
            print(f'{root} is up to date ({root / MARKER})')
    summaries = []
    for set_index, name, root, params in todo:
        writer, own_paths = DATASETS[name]
        if root.exists():
            remove_own_files(root, own_paths)
        root.mkdir(parents=True, exist_ok=True)
        write_marker(root, params, complete=False)
        for split, num_images in enumerate((num_train, num_val)):
            # An independent random stream per data set and split.
            rng = np.random.default_rng([seed, set_index, split])
            summaries.append(writer(root, split, num_images, image_size, rng))
        write_marker(root, params, complete=True)
    return summaries


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        '--out-dir',
        type=Path,
        default=Path('data'),
        help='folder for toy_coco/ and toy_ade20k/')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument(
        '--num-train', type=int, default=96, help='training images per set')
    parser.add_argument(
        '--num-val', type=int, default=24, help='validation images per set')
    parser.add_argument(
        '--image-size',
        type=int,
        default=128,
        help='side of the square images in pixels')
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate sets written with other parameters')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        summaries = make_toy_data(args.out_dir, args.seed, args.num_train,
                                  args.num_val, args.image_size, args.force)
    except ToyDataError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    for line in summaries:
        print(f'wrote {line}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
