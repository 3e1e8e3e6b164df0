"""Your own images (datasets.folder_images, train.py --dataset folder:PATH): shapes, the
fixed split, the one-line errors, and one tiny training run."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import datasets

pytestmark = pytest.mark.slow  # trains on image folders (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--seed', '3', '--max-batches', '3', '--ext-every-n', '3', '--batch-size', '9', '--model-args',
        'T=10,n_temporal_basis=2,image_size=8,crop=8,n_scales=1,n_hidden_conv=4,n_layers_conv=1,'
        'n_hidden_dense_upper=4,n_layers_dense_upper=1']


def make_images(folder, n=30):
    """n small PNG/JPEG images of varied sizes, some in a subfolder; returns the folder."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, 'sub'), exist_ok=True)
    for i in range(n):
        h, w = 12 + i % 5, 16 + i % 3
        name = os.path.join(folder, 'sub' if i % 3 == 0 else '', 'im{:02d}.{}'.format(i, 'jpg' if i % 4 == 0 else 'png'))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(name)
    return str(folder)


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / 'my images')


def test_load_images_shapes_dtype_and_a_fixed_split(images):
    train = datasets.load_images('folder', 'train', folder=images, image_size=8, channels=1)
    test = datasets.load_images('folder', 'test', folder=images, image_size=8, channels=1)
    assert train.shape == (27, 1, 8, 8) and test.shape == (3, 1, 8, 8)
    assert train.dtype == test.dtype == np.uint8
    assert np.array_equal(train, datasets.load_images('folder', 'train', folder=images, image_size=8, channels=1))
    colour = datasets.folder_images(images, image_size=16, channels=3)
    assert colour['train'].shape == (27, 3, 16, 16) and colour['test'].shape == (3, 3, 16, 16)
    assert colour['train'].std() > 20  # the random pixels survive the resize


def test_a_plain_colour_image_keeps_its_colour_and_grey_level(tmp_path):
    Image.new('RGB', (40, 30), (200, 100, 50)).save(tmp_path / 'a.png')
    x = datasets.square_image(str(tmp_path / 'a.png'), 8, 3)
    assert x.shape == (3, 8, 8) and list(x[:, 4, 4]) == [200, 100, 50]
    grey = datasets.square_image(str(tmp_path / 'a.png'), 8, 1)
    assert grey.shape == (1, 8, 8) and abs(int(grey[0, 0, 0]) - (0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1


def test_errors_say_what_is_wrong(tmp_path, images):
    with pytest.raises(datasets.DataMissing, match='not found'):
        datasets.folder_images(str(tmp_path / 'absent'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(datasets.DataMissing, match='no .png'):
        datasets.folder_images(str(tmp_path / 'empty'))
    few = make_images(tmp_path / 'few', n=9)
    with pytest.raises(datasets.DataMissing, match='9 images; at least 10'):
        datasets.folder_images(few)
    bad = os.path.join(images, 'broken.png')
    with open(bad, 'w') as f:
        f.write('not an image')
    with pytest.raises(ValueError, match='cannot read the image .*broken.png'):
        datasets.folder_images(images)


def train(args, out=None):
    output = ['--output-dir', str(out)] if out else []
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + args + output,
                          capture_output=True, text=True, timeout=300)


def test_train_py_errors_are_one_line_and_exit_2(tmp_path):
    r = train(['--dataset', 'folder:' + str(tmp_path / 'absent')], tmp_path)
    assert r.returncode == 2 and 'no such folder' in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_tiny_run_trains_names_its_directory_and_resume_finds_the_folder(tmp_path, images):
    r = train(['--dataset', 'folder:' + images] + TINY, tmp_path / 'runs')
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(tmp_path / 'runs' / 'diffusion_folder-my-images_*'))
    with open(os.path.join(run_dir, 'results.json')) as f:
        results = json.load(f)
    assert results['dataset'] == 'folder' and results['iterations'] == 3 and np.isfinite(results['K_bits'])
    os.rename(images, images + ' gone')
    r = train(['--resume', run_dir, '--max-batches', '4'])  # the checkpoint's folder is sought again
    assert r.returncode == 2 and 'folder {} not found'.format(images) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
