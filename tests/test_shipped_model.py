"""The contest model shipped in imgs/model/: a fresh clone's `python main.py --mode=infer` uses it, its files
agree with each other, and it reads the bundled sample and images of another renderer at README's accuracy."""
import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

import cnn_lstm_otc_ocr as ocr
import utils
from conftest import REPO, run_cli

v1 = tf.compat.v1
SHIPPED = os.path.join(REPO, 'imgs', 'model')
# imgs/model/README.md, "Evaluation data and results", measured 99% on imgs/infer/ (100 images) and 96% on
# tests/data/other_renderers/ (100): the bounds leave room for other CPUs' arithmetic, not for a worse model.
BUNDLED_ACCURACY = 0.98
OTHER_RENDERERS_ACCURACY = 0.92


def bundled_labels():
    """imgs/labels.txt: {file name: (label, value)}."""
    with open(os.path.join(REPO, 'imgs', 'labels.txt')) as labels_file:
        return {name: (label, value) for name, label, value in (line.split() for line in labels_file)}


@pytest.mark.slow
def test_default_infer_uses_the_shipped_model_on_the_bundled_sample(tmp_path):
    shutil.copytree(os.path.join(REPO, 'imgs', 'infer'), tmp_path / 'imgs' / 'infer')
    result = run_cli('--mode=infer', cwd=tmp_path)  # every flag at its default; no ./checkpoint/ here
    assert result.returncode == 0, result.stderr
    assert 'using the shipped contest model in %s' % SHIPPED in result.stdout
    labels = bundled_labels()
    readings = [line.split('\t') for line in (tmp_path / 'result.txt').read_text().splitlines()]
    assert sorted(name for name, _, _, _ in readings) == sorted(labels)
    correct = [(name, value) for name, prediction, value, _ in readings if prediction == labels[name][0]]
    assert len(correct) >= BUNDLED_ACCURACY * len(labels), readings
    assert all(value == labels[name][1] for name, value in correct)
    assert all(0 <= float(confidence) <= 1 for _, _, _, confidence in readings)


@pytest.mark.slow
def test_images_without_text_are_read_as_nothing(tmp_path):
    (tmp_path / 'blank').mkdir()
    for name, colour in (('white', 255), ('black', 0), ('grey', 128), ('paper', (198, 226, 236))):
        cv2.imwrite(str(tmp_path / 'blank' / (name + '.png')), np.full((60, 180, 3), colour, np.uint8))
    result = run_cli('--mode=infer', '--checkpoint_dir=%s' % SHIPPED, '--infer_dir=%s' % (tmp_path / 'blank'),
                     '--infer_output=%s' % (tmp_path / 'result.txt'))
    assert result.returncode == 0, result.stderr
    readings = [line.split('\t') for line in (tmp_path / 'result.txt').read_text().splitlines()]
    assert len(readings) == 4 and all(reading == '' for _, reading, _, _ in readings), readings


@pytest.mark.slow
def test_other_renderers_are_read_at_the_documented_accuracy():
    result = run_cli('--mode=val', '--checkpoint_dir=%s' % SHIPPED,
                     '--val_dir=%s' % os.path.join(REPO, 'tests', 'data', 'other_renderers'))
    assert result.returncode == 0, result.stderr
    accuracy = float(re.fullmatch(r'accuracy=([\d.]+) cer=[\d.]+ images=100', result.stdout.splitlines()[-1])[1])
    assert accuracy >= OTHER_RENDERERS_ACCURACY, result.stdout


def test_architecture_file_matches_the_inference_weights():
    with open(os.path.join(SHIPPED, 'architecture.json')) as architecture_file:
        arch = utils.Architecture(**json.load(architecture_file))
    with tf.Graph().as_default():
        images = v1.placeholder(tf.uint8, [None, arch.image_height, arch.image_width, arch.image_channel])
        with v1.variable_scope('ocr'):
            ocr.Recogniser('infer', arch).logits(images)
        graph = {variable.op.name: variable.shape.as_list() for variable in v1.global_variables()}
    assert dict(tf.train.list_variables(tf.train.latest_checkpoint(SHIPPED))) == graph  # no optimiser slots
    size = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(SHIPPED) for name in names)
    assert 5 * 2 ** 20 < size < 8 * 2 ** 20  # every file: the checkpoint and the SavedModel's variables, 3 MB each
