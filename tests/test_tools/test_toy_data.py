"""tools/make_toy_data.py: the sets load in mmdet's CocoDataset and mmseg's
ADE20KDataset, their masks and labels match the pixels, and the generator is
deterministic and careful with existing folders."""
import importlib.util
import json
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest

pytestmark = [
    # pycocotools under numpy 2, and mmseg about the pipeline asked for here
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't"),
    pytest.mark.filterwarnings('ignore:`reduce_zero_label` will be'),
]

TOOL = Path(__file__).resolve().parents[2] / 'tools/make_toy_data.py'
CLASSES = ('circle', 'square', 'triangle')
SMALL = dict(seed=0, num_train=4, num_val=2, image_size=64)


def load_tool():
    spec = importlib.util.spec_from_file_location('make_toy_data', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def files_of(root: Path) -> Dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('toy')
    tool.make_toy_data(out, **SMALL)
    return out


def ring(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels between ``inner`` and ``outer`` pixels (chessboard distance)
    away from ``mask``."""

    def grow(width):
        kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
        return cv2.dilate(mask.astype(np.uint8), kernel) > 0

    return grow(outer) & ~(grow(inner) if inner else mask)


def assert_mask_matches_pixels(image: np.ndarray, mask: np.ndarray,
                               others: np.ndarray) -> None:
    """The shape under ``mask`` is a flat colour far from the background
    around it, and the mask's own border pixels (and the pixels just
    outside it) side with the right one of the two colours."""
    kernel = np.ones((3, 3), np.uint8)
    core = cv2.erode(mask.astype(np.uint8), kernel) > 0
    if not core.any():  # a very thin shape: use all of it
        core = mask
    near_others = ring(others, 0, 2) | others
    around = ring(mask, 2, 5) & ~near_others
    image = image.astype(np.float64)
    inside_colour = image[core].mean(axis=0)
    outside_colour = image[around].mean(axis=0)
    assert np.linalg.norm(inside_colour - outside_colour) > 60
    assert image[core].std(axis=0).max() < 20

    def sides_with_inside(pixels):
        to_inside = np.linalg.norm(image[pixels] - inside_colour, axis=1)
        to_outside = np.linalg.norm(image[pixels] - outside_colour, axis=1)
        return (to_inside < to_outside).mean()

    # A mask off by one pixel fails this for most shapes.
    assert sides_with_inside(mask) > 0.97
    assert sides_with_inside(ring(mask, 0, 1) & ~near_others) < 0.03


def test_coco_json_fields(toy_dir):
    root = toy_dir / 'toy_coco'
    coco = json.loads(
        (root / 'annotations/instances_val2017.json').read_text())
    assert {'info', 'licenses', 'images', 'annotations',
            'categories'} <= set(coco)
    assert coco['categories'] == [
        dict(id=k + 1, name=c, supercategory='shape')
        for k, c in enumerate(CLASSES)
    ]
    assert [im['id'] for im in coco['images']] == [1, 2]
    assert all(im['height'] == im['width'] == 64 for im in coco['images'])
    anns = coco['annotations']
    assert [a['id'] for a in anns] == list(range(1, len(anns) + 1))
    vertices = {1: range(24, 33), 2: [4], 3: [3]}
    for ann in anns:
        assert ann['iscrowd'] == 0
        (polygon, ) = ann['segmentation']
        points = np.array(polygon).reshape(-1, 2)
        assert len(points) in vertices[ann['category_id']]
        x1, y1 = points.min(axis=0)
        x2, y2 = points.max(axis=0)
        assert ann['bbox'] == pytest.approx([x1, y1, x2 - x1, y2 - y1],
                                            abs=0.011)
        x, y = points.T
        area = abs(x @ np.roll(y, -1) - y @ np.roll(x, -1)) / 2
        assert ann['area'] == pytest.approx(area, abs=0.011)
        assert 0.1 * 64 < max(x2 - x1, y2 - y1) < 0.7 * 64


def test_coco_dataset_loads_with_matching_masks(toy_dir):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    dataset = CocoDataset(
        data_root=str(toy_dir / 'toy_coco'),
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
        ],
        test_mode=False)
    assert len(dataset) == SMALL['num_train']
    for index in range(len(dataset)):
        result = dataset[index]
        image = result['img']
        masks = result['gt_masks'].to_ndarray().astype(bool)
        boxes = result['gt_bboxes'].numpy()
        labels = result['gt_bboxes_labels']
        assert image.shape == (64, 64, 3)
        assert 1 <= len(masks) <= 4 and len(boxes) == len(labels) == len(masks)
        assert set(labels.tolist()) <= {0, 1, 2}
        assert not result['gt_ignore_flags'].any()
        assert masks.sum(axis=0).max() == 1  # no overlaps
        for k, (mask, box) in enumerate(zip(masks, boxes)):
            ys, xs = np.nonzero(mask)
            assert len(xs) > 0
            # pixel centres lie in the box
            assert box[0] <= xs.min() + 0.5 and xs.max() + 0.5 <= box[2]
            assert box[1] <= ys.min() + 0.5 and ys.max() + 0.5 <= box[3]
            others = np.delete(masks, k, axis=0).any(axis=0)
            assert_mask_matches_pixels(image, mask, others)


# The four ADE20K classes the labels reduce to map onto themselves.
@pytest.mark.parametrize(
    'metainfo',
    [None, dict(classes=('wall', 'building', 'sky', 'floor'))])
def test_ade20k_dataset_loads(toy_dir, metainfo):
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules
    register_all_modules()
    root = toy_dir / 'toy_ade20k'
    for split, count in (('training', 4), ('validation', 2)):
        dataset = ADE20KDataset(
            data_root=str(root),
            metainfo=metainfo,
            data_prefix=dict(
                img_path=f'images/{split}',
                seg_map_path=f'annotations/{split}'),
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', reduce_zero_label=True)
            ])
        assert len(dataset) == count
        for index in range(len(dataset)):
            result = dataset[index]
            image, seg = result['img'], result['gt_seg_map']
            assert seg.shape == image.shape[:2] == (64, 64)
            values = set(np.unique(seg).tolist())
            assert 0 in values and len(values) > 1
            assert values <= {0, 1, 2, 3}
            shapes = seg > 0
            num_shapes, shape_ids = cv2.connectedComponents(
                shapes.astype(np.uint8))
            assert 2 <= num_shapes <= 5  # the background and 1 to 4 shapes
            for shape_id in range(1, num_shapes):
                region = shape_ids == shape_id
                assert len(np.unique(seg[region])) == 1
                assert_mask_matches_pixels(image, region, shapes & ~region)


def test_ade20k_label_files(toy_dir):
    root = toy_dir / 'toy_ade20k'
    images = sorted(p.stem for p in (root / 'images/training').iterdir())
    labels = sorted(p.stem for p in (root / 'annotations/training').iterdir())
    assert images == labels == [f'{i:06d}' for i in range(4)]
    for stem in labels:
        label = cv2.imread(
            str(root / f'annotations/training/{stem}.png'),
            cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.shape == (64, 64)
        assert 1 in label and set(np.unique(label).tolist()) <= {1, 2, 3, 4}


def test_same_arguments_give_identical_files(toy_dir, tmp_path):
    assert tool.main([
        '--out-dir',
        str(tmp_path), '--seed', '0', '--num-train', '4', '--num-val', '2',
        '--image-size', '64'
    ]) == 0
    for name in ('toy_coco', 'toy_ade20k'):
        assert files_of(tmp_path / name) == files_of(toy_dir / name)


def test_streams_differ(toy_dir):
    train = toy_dir / 'toy_coco/train2017/000000.jpg'
    val = toy_dir / 'toy_coco/val2017/000000.jpg'
    ade = toy_dir / 'toy_ade20k/images/training/000000.jpg'
    assert len({train.read_bytes(), val.read_bytes(), ade.read_bytes()}) == 3


def test_rerun_with_same_parameters_skips(tmp_path, capsys):
    tool.make_toy_data(tmp_path, **SMALL)
    marker = tmp_path / 'toy_coco/toy_data.json'
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*')}
    capsys.readouterr()
    assert tool.make_toy_data(tmp_path, **SMALL) == []
    assert 'up to date' in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*')}
    assert json.loads(marker.read_text())['params']['seed'] == 0


def test_other_parameters_need_force(tmp_path, capsys):
    tool.make_toy_data(tmp_path, **SMALL)
    before = files_of(tmp_path)
    other = dict(SMALL, seed=1, num_train=3)
    with pytest.raises(tool.ToyDataError, match='--force'):
        tool.make_toy_data(tmp_path, **other)
    argv = [
        '--out-dir',
        str(tmp_path), '--seed', '1', '--num-train', '3', '--num-val', '2',
        '--image-size', '64'
    ]
    assert tool.main(argv) == 1
    assert '--force' in capsys.readouterr().err
    assert files_of(tmp_path) == before

    user_file = tmp_path / 'toy_coco/train2017/notes.txt'
    user_file.write_text('mine')
    assert tool.main(argv + ['--force']) == 0
    assert user_file.read_text() == 'mine'
    train = sorted(p.name for p in (tmp_path / 'toy_coco/train2017').iterdir())
    assert train == ['000000.jpg', '000001.jpg', '000002.jpg', 'notes.txt']
    labels = list((tmp_path / 'toy_ade20k/annotations/training').iterdir())
    assert len(labels) == 3
    after = files_of(tmp_path)
    assert after['toy_coco/val2017/000000.jpg'] != before[
        'toy_coco/val2017/000000.jpg']
    marker = json.loads(after['toy_ade20k/toy_data.json'])
    assert marker == dict(
        params=dict(
            format_version=tool.FORMAT_VERSION,
            dataset='ade20k',
            seed=1,
            num_train=3,
            num_val=2,
            image_size=64),
        complete=True)


def test_folder_without_marker_is_refused_and_untouched(tmp_path):
    user_file = tmp_path / 'toy_ade20k/images/training/000000.jpg'
    user_file.parent.mkdir(parents=True)
    user_file.write_bytes(b'user data')
    for force in (False, True):
        with pytest.raises(
                tool.ToyDataError, match=str(tmp_path / 'toy_ade20k')):
            tool.make_toy_data(tmp_path, **SMALL, force=force)
    assert user_file.read_bytes() == b'user data'
    assert [p.name for p in tmp_path.iterdir()] == ['toy_ade20k']


def test_interrupted_run_is_redone(tmp_path):
    tool.make_toy_data(tmp_path, **SMALL)
    complete = files_of(tmp_path)
    marker = tmp_path / 'toy_coco/toy_data.json'
    marker.write_text(
        json.dumps(dict(json.loads(marker.read_text()), complete=False)))
    (tmp_path / 'toy_coco/val2017/000001.jpg').unlink()
    written = tool.make_toy_data(tmp_path, **SMALL)
    assert len(written) == 2  # the two COCO splits, not ADE20K
    assert files_of(tmp_path) == complete


@pytest.mark.parametrize(
    'bad',
    [dict(num_val=0), dict(image_size=32),
     dict(seed=-1)])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(tool.ToyDataError):
        tool.make_toy_data(tmp_path, **dict(SMALL, **bad))
    assert not any(tmp_path.iterdir())
