"""The LiteRT and ONNX models that --mode=export writes read as `--mode=infer --decoder=greedy` does: the same text
for every image, confidences within 0.01, on the bundled infer images and 2,000 generated ones, for the trained
test model and the shipped one; README's two clients run as printed."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cnn_lstm_otc_ocr as ocr
import utils
from conftest import REPO, USER_ENVIRONMENT, portable_runner, run_cli

pytestmark = pytest.mark.slow  # each model is exported (about a minute) and read three times

pytest.importorskip('onnxruntime')
pytest.importorskip('ai_edge_litert.interpreter')
pytest.importorskip('tf2onnx')

GENERATED = 2000
BATCH = 64


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """The bundled infer images and GENERATED images of the contest's renderer, in one folder."""
    folder = tmp_path_factory.mktemp('portable_images')
    result = run_cli('--mode=synth', '--renderer=contest', '--out_dir=%s' % folder, '--num_images=%d' % GENERATED,
                     '--seed=5', script='helper.py')
    assert result.returncode == 0, result.stderr
    for name in os.listdir(os.path.join(REPO, 'imgs', 'infer')):
        os.link(os.path.join(REPO, 'imgs', 'infer', name), folder / ('bundled_' + name))
    os.remove(folder / 'labels.txt')
    return folder


def export_and_infer(checkpoint_dir, images, folder, *flags):
    """The model of checkpoint_dir exported to folder/export, and infer's greedy readings of images:
    {file name: (text, confidence)}."""
    result = run_cli('--mode=export', '--checkpoint_dir=%s' % checkpoint_dir, '--export_dir=%s' % (folder / 'export'),
                     '--export_formats=tflite,onnx', *flags)
    assert result.returncode == 0, result.stderr
    result = run_cli('--mode=infer', '--decoder=greedy', '--batch_size=128', '--checkpoint_dir=%s' % checkpoint_dir,
                     '--infer_dir=%s' % images, '--infer_output=%s' % (folder / 'greedy.txt'), *flags)
    assert result.returncode == 0, result.stderr
    readings = {}
    for line in open(folder / 'greedy.txt'):
        name, text, _, confidence = line.rstrip('\n').split('\t')
        readings[name] = (text, float(confidence))
    return folder / 'export', readings


@pytest.fixture(scope='module')
def shipped(images, tmp_path_factory):
    return export_and_infer(os.path.join(REPO, 'imgs', 'model'), images, tmp_path_factory.mktemp('shipped'))


@pytest.fixture(scope='module')
def trained_model(trained_once, images, tmp_path_factory):
    folder, _ = trained_once
    return export_and_infer(folder / 'checkpoint', images, tmp_path_factory.mktemp('trained_portable'))


def architecture(export):
    with open(export / 'architecture.json') as file:
        return json.load(file)


def time_steps(arch):
    return ocr.time_steps(utils.Architecture(**arch))


def read_folder(images, arch):
    """Every image of the folder as infer reads and resizes it: file names and uint8 [n, h, w, c]."""
    names = sorted(os.listdir(images))
    pixels = [utils.read_image(str(images / name), arch['image_height'], arch['image_width'],
                               arch['image_channel'])[0] for name in names]
    return names, np.stack(pixels)


def run_in_batches(path, pixels):
    run = portable_runner(path)
    outputs = [run(pixels[start:start + BATCH]) for start in range(0, len(pixels), BATCH)]
    return np.concatenate([out[0] for out in outputs]), np.concatenate([out[1] for out in outputs])


RUNTIMES = ('model.onnx', 'model.tflite')


def texts(labels, charset):
    return [''.join(charset[index] for index in row if index >= 0) for row in labels]


def assert_reads_as_infer(export, readings, images, runtime):
    arch = architecture(export)
    names, pixels = read_folder(images, arch)
    labels, confidence = run_in_batches(export / runtime, pixels)
    assert labels.dtype == np.int32 and confidence.dtype == np.float32
    assert labels.shape == (len(names), time_steps(arch))
    got = dict(zip(names, texts(labels, arch['charset'])))
    differing = [(name, readings[name][0], got[name]) for name in names if got[name] != readings[name][0]]
    assert not differing, '%d of %d read otherwise (name, infer, %s): %s' % (
        len(differing), len(names), runtime, differing[:5])
    np.testing.assert_allclose(confidence, [readings[name][1] for name in names], atol=0.01)
    return dict(zip(names, confidence))


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_shipped_model_reads_as_infer(shipped, images, runtime):
    assert_reads_as_infer(*shipped, images, runtime)


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_trained_model_reads_as_infer(trained_model, images, runtime):
    assert_reads_as_infer(*trained_model, images, runtime)


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_any_batch_size_and_blank_images_read_nothing(shipped, runtime):
    export, _ = shipped
    arch = architecture(export)
    shape = (arch['image_height'], arch['image_width'], arch['image_channel'])
    one = np.full((1,) + shape, 255, np.uint8)
    seven = np.stack([np.full(shape, level, np.uint8) for level in (255, 0, 128, 235, 250, 200, 30)])
    for batch in (one, seven):
        labels, confidence = run_in_batches(export / runtime, batch)
        assert labels.shape == (len(batch), time_steps(arch)) and confidence.shape == (len(batch),)
        assert texts(labels, arch['charset']) == [''] * len(batch)


def test_int8_model_reads_within_a_tenth_of_a_point_of_the_float_one(shipped, images):
    export, readings = shipped
    arch = architecture(export)
    names, pixels = read_folder(images, arch)
    labels = [name.split('_', 1)[1][:-len('.png')] for name in names if not name.startswith('bundled_')]
    generated = np.array([not name.startswith('bundled_') for name in names])
    accuracy = {}
    for model in ('model.tflite', 'model_int8.tflite'):
        read = texts(run_in_batches(export / model, pixels[generated])[0], arch['charset'])
        accuracy[model] = np.mean([text == label for text, label in zip(read, labels)])
    assert accuracy['model.tflite'] > 0.95
    assert abs(accuracy['model_int8.tflite'] - accuracy['model.tflite']) <= 0.001
    assert os.path.getsize(export / 'model_int8.tflite') < os.path.getsize(export / 'model.tflite') / 2


def readme_client(module):
    """README's client (an indented code block) that imports module."""
    with open(os.path.join(REPO, 'README.md')) as file:
        blocks = re.findall(r'(?:\n(?: {4}.*|)(?=\n))+', file.read())
    found = [block for block in blocks if re.search(r'^ {4}(?:import|from) .*\b%s\b' % module, block, re.M)]
    assert len(found) == 1, 'README should show one client that imports %s' % module
    return '\n'.join(line[4:] for line in found[0].splitlines())


@pytest.mark.parametrize('module', ['ai_edge_litert', 'onnxruntime'])
def test_readme_clients_read_as_infer(shipped, module, tmp_path):
    export, readings = shipped
    os.symlink(export, tmp_path / 'served')
    os.makedirs(tmp_path / 'imgs')
    os.symlink(os.path.join(REPO, 'imgs', 'infer'), tmp_path / 'imgs' / 'infer')
    result = subprocess.run([sys.executable, '-c', readme_client(module)], capture_output=True, text=True,
                            cwd=str(tmp_path), timeout=300, env=USER_ENVIRONMENT)
    assert result.returncode == 0, result.stderr
    text, confidence = result.stdout.split()
    assert text == readings['bundled_0.png'][0]
    assert abs(float(confidence) - readings['bundled_0.png'][1]) < 0.01
