"""utils.py: label parsing, charset, sparse labels, metrics, folder checks and the image pipeline."""
import os
from unittest import mock

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import utils
from conftest import random_labels, write_text_images

CHARSET = utils.Charset('0123456789+-*()')


@pytest.mark.parametrize('name, label', [
    ('12_(3-7)*5.png', '(3-7)*5'), ('a_b_c.jpg', 'b_c'), ('/x/y/7_42.JPEG', '42'), ('3_.png', ''),
    ('nolabel.png', None)])
def test_label_is_everything_after_the_first_underscore(name, label):
    assert utils.label_from_filename(name) == label


def test_natural_order_puts_2_before_10():
    assert sorted(['10.png', '2.png', 'a1.png', '1.png'], key=utils.natural_key) == \
        ['1.png', '2.png', '10.png', 'a1.png']


def test_charset_round_trip_and_blank():
    ids = CHARSET.encode('(3-7)*5')
    assert ids == [13, 3, 11, 7, 14, 12, 5]
    assert CHARSET.decode(ids) == '(3-7)*5'
    assert CHARSET.num_classes == 16
    assert CHARSET.decode([15, -1, 1]) == '1'  # blank and padding are not characters
    assert CHARSET.unknown('1a+b') == ['a', 'b']


def test_charset_refuses_empty_and_repeated():
    with pytest.raises(utils.UserError, match='empty'):
        utils.Charset('')
    with pytest.raises(utils.UserError, match="repeats '1'"):
        utils.Charset('0121')


@pytest.mark.parametrize('label, steps', [('123', 3), ('112', 4), ('1111', 7), ('', 0), ('(3-7)*5', 7)])
def test_ctc_needs_a_blank_between_repeats(label, steps):
    assert utils.ctc_steps_needed(label) == steps


def test_accuracy_and_cer():
    accuracy, cer = utils.accuracy_and_cer(['123', '45', ''], ['123', '456', '78'])
    assert accuracy == pytest.approx(1 / 3)
    assert cer == pytest.approx((0 + 1 + 2) / 8)
    assert utils.edit_distance('kitten', 'sitting') == 3


def test_labelled_folder_lists_every_problem_with_its_file(tmp_path):
    folder = str(tmp_path)
    write_text_images(folder, ['12', '3a', '11111111', '45'], names=['0_12.png', '1_3a.png', '2_11111111.png',
                                                                     'nolabel.png'])
    with pytest.raises(utils.UserError) as error:
        utils.list_labelled_images(folder, 'train_dir', CHARSET, time_steps=12)
    message = str(error.value)
    assert '--train_dir=%s: 3 of 4 images' % folder in message
    assert "1_3a.png: label '3a' has 'a'" in message
    assert '2_11111111.png' in message and 'needs 15 time steps, the model has 12' in message
    assert '--max_stepsize' in message
    assert 'nolabel.png: no label' in message


def test_labelled_folder_in_natural_order_and_other_files_ignored(tmp_path, caplog):
    folder = str(tmp_path)
    write_text_images(folder, ['5', '6', '7'], names=['10_5.png', '2_6.jpg', '1_7.bmp'])
    (tmp_path / 'labels.txt').write_text('x')
    paths, labels = utils.list_labelled_images(folder, 'val_dir', CHARSET, time_steps=12)
    assert [os.path.basename(p) for p in paths] == ['1_7.bmp', '2_6.jpg', '10_5.png']
    assert labels == ['7', '6', '5']
    assert 'labels.txt' in caplog.text


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(utils.UserError, match='--val_dir=%s: no such folder' % (tmp_path / 'nope')):
        utils.list_images(str(tmp_path / 'nope'), 'val_dir')
    with pytest.raises(utils.UserError, match='holds no images'):
        utils.list_images(str(tmp_path), 'infer_dir')


def test_read_image_resizes_any_size_to_grey_or_colour(tmp_path):
    path = write_text_images(str(tmp_path), ['42'], size=(75, 310))[0]
    grey, ok = utils.read_image(path, 32, 96, 1)
    assert ok and grey.shape == (32, 96, 1) and grey.dtype == np.uint8
    assert grey.min() < 100 < grey.max()  # the text survived the resize
    colour, ok = utils.read_image(path, 60, 180, 3)
    assert ok and colour.shape == (60, 180, 3)


@pytest.mark.parametrize('ink, expected_paper', [(0, 255), (255, 0)])
def test_transparent_background_goes_behind_the_text_in_contrast(tmp_path, ink, expected_paper):
    image = np.zeros((20, 40, 4), np.uint8)  # transparent black everywhere, as many renderers leave it
    image[5:15, 10:30] = (ink, ink, ink, 255)
    cv2.imwrite(str(tmp_path / 'text.png'), image)
    grey, ok = utils.read_image(str(tmp_path / 'text.png'), 20, 40, 1)
    assert ok and grey[0, 0, 0] == expected_paper and grey[10, 20, 0] == ink
    colour, _ = utils.read_image(str(tmp_path / 'text.png'), 20, 40, 3)
    assert colour.shape == (20, 40, 3) and tuple(colour[0, 0]) == (expected_paper,) * 3


def test_sixteen_bit_images_are_read_as_eight_bit(tmp_path):
    image = np.full((20, 40), 65535, np.uint16)
    image[5:15, 10:30] = 0
    cv2.imwrite(str(tmp_path / 'deep.png'), image)
    grey, ok = utils.read_image(str(tmp_path / 'deep.png'), 20, 40, 1)
    assert ok and grey.dtype == np.uint8 and grey[0, 0, 0] == 255 and grey[10, 20, 0] == 0


def test_read_image_of_corrupt_file_warns_with_its_name(tmp_path, caplog):
    path = tmp_path / '1_23.png'
    path.write_bytes(b'not a png at all')
    image, ok = utils.read_image(str(path), 32, 96, 1)
    assert not ok and image.shape == (32, 96, 1)
    assert str(path) in caplog.text


def run_dataset(dataset):
    batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    batches = []
    with tf.compat.v1.Session() as session:
        while True:
            try:
                batches.append(session.run(batch))
            except tf.errors.OutOfRangeError:
                return batches


def test_pipeline_keeps_the_partial_batch_and_pads_label_ids(tmp_path):
    labels = ['1', '22', '333', '4', '55', '6', '7']
    paths = write_text_images(str(tmp_path), labels)
    with tf.Graph().as_default():
        batches = run_dataset(utils.image_dataset(paths, labels, CHARSET, 3, (32, 96, 1)))
    assert [len(b['paths']) for b in batches] == [3, 3, 1]
    first = batches[0]
    assert first['images'].shape == (3, 32, 96, 1) and first['images'].dtype == np.uint8
    assert first['label_ids'].tolist() == [[1, -1, -1], [2, 2, -1], [3, 3, 3]]
    assert [label.decode() for label in first['labels']] == ['1', '22', '333']


def test_pipeline_drops_or_keeps_unreadable_images(tmp_path, caplog):
    paths = write_text_images(str(tmp_path), ['1', '2', '3'])
    with open(paths[1], 'wb') as broken:
        broken.write(b'\x89PNG broken')
    with tf.Graph().as_default():
        kept = run_dataset(utils.image_dataset(paths, None, CHARSET, 5, (32, 96, 1), keep_unreadable=True))
        dropped = run_dataset(utils.image_dataset(paths, ['1', '2', '3'], CHARSET, 5, (32, 96, 1)))
    assert kept[0]['ok'].tolist() == [True, False, True]
    assert [label.decode() for label in dropped[0]['labels']] == ['1', '3']
    assert paths[1] in caplog.text


def test_augmentation_changes_images_but_keeps_shape_type_and_labels(tmp_path):
    labels = random_labels(32, seed=4)
    paths = write_text_images(str(tmp_path), labels)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        plain = run_dataset(utils.image_dataset(paths, labels, CHARSET, 32, (32, 96, 1)))[0]
        augmented = run_dataset(utils.image_dataset(paths, labels, CHARSET, 32, (32, 96, 1), augment=True))[0]
    assert augmented['images'].shape == plain['images'].shape and augmented['images'].dtype == np.uint8
    assert augmented['labels'].tolist() == plain['labels'].tolist()
    changed = np.abs(augmented['images'].astype(int) - plain['images']).mean(axis=(1, 2, 3)) > 1
    assert 20 <= changed.sum() < 32  # most images change, some are left as they are
    # the text is still there: no image is washed out to one level (contrast is lowered, never to nothing)
    assert (augmented['images'].reshape(32, -1).std(axis=1) > 3).all()


def test_warp_without_changes_is_the_identity():
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        with mock.patch.object(utils, 'per_image', lambda size, low, high, share, neutral=0.0:
                               tf.fill([size], neutral)):
            transforms = session.run(utils.warp_transforms(2, 32, 96))
    assert np.allclose(transforms, [[1, 0, 0, 0, 1, 0, 0, 0]] * 2, atol=1e-5)


def test_pipeline_reshuffles_every_epoch(tmp_path):
    labels = [str(i) for i in range(10)]
    paths = write_text_images(str(tmp_path), labels)
    with tf.Graph().as_default():
        batches = run_dataset(utils.image_dataset(paths, labels, CHARSET, 10, (32, 96, 1), shuffle=True,
                                                  seed=3, repeat=2))
    first, second = [[label.decode() for label in b['labels']] for b in batches]
    assert sorted(first) == sorted(second) == sorted(labels)
    assert first != second


@pytest.mark.parametrize('text, value', [
    ('2+3*4', 14), ('(2+3)*4', 20), ('9-3-2', 4), ('5-(6+2)', -3), ('(3-7)*5', -20), ('0*9-9', -9), ('7', 7),
    ('05+3', 8), ('007', 7),
])
def test_expression_value_of_arithmetic(text, value):
    assert utils.expression_value(text) == value


@pytest.mark.parametrize('text', ['', '2**3', '3/1', '1+', '()', '__import__("os")', 'abc', '2 + 3', '1e3', '--3',
                                  '-3', '(1,2)', '1_0', None])
def test_expression_value_refuses_anything_else(text):
    assert utils.expression_value(text) is None


def test_read_image_takes_16_bit_alpha_and_palette_inputs_and_keeps_their_text(tmp_path):
    text = np.full((40, 120), 255, np.uint8)
    cv2.putText(text, '42', (20, 32), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 0, 3)
    ink = text < 128
    cv2.imwrite(str(tmp_path / 'deep.png'), text.astype(np.uint16) * 257)
    rgba = np.zeros((40, 120, 4), np.uint8)
    rgba[..., 3] = np.where(ink, 255, 0)  # black text on a transparent background
    cv2.imwrite(str(tmp_path / 'alpha.png'), rgba)
    palette = Image.fromarray(np.stack([text, text // 2, text], axis=2)).convert('P', palette=Image.ADAPTIVE, colors=4)
    palette.save(str(tmp_path / 'palette.png'))
    cv2.imwrite(str(tmp_path / 'grey.jpg'), text)
    for name in ('deep.png', 'alpha.png', 'palette.png', 'grey.jpg'):
        for channels in (1, 3):
            image, ok = utils.read_image(str(tmp_path / name), 40, 120, channels)
            assert ok and image.shape == (40, 120, channels) and image.dtype == np.uint8, (name, channels)
            grey = image.mean(axis=2)
            assert grey[ink].mean() < 80 and grey[~ink].mean() > 170, (name, channels)  # dark text on light


def test_streaming_pipeline_reads_what_the_cached_one_does(tmp_path):
    labels = random_labels(9, seed=6)
    paths = write_text_images(str(tmp_path), labels)
    with tf.Graph().as_default():
        cached = run_dataset(utils.image_dataset(paths, labels, CHARSET, 4, (32, 96, 1)))
        streamed = run_dataset(utils.image_dataset(paths, labels, CHARSET, 4, (32, 96, 1), cache_bytes=0))
    assert len(cached) == len(streamed) == 3
    for a, b in zip(cached, streamed):
        assert (a['images'] == b['images']).all() and a['labels'].tolist() == b['labels'].tolist()
