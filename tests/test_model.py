"""cnn_lstm_otc_ocr.py: the time-step rule, any batch size, labels to CTC, a model that learns, and the input
pipeline: image files, served image bytes, augmentation."""
import io
from unittest import mock

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import cnn_lstm_otc_ocr as ocr
import utils
from conftest import png_claiming, random_labels, write_text_images

v1 = tf.compat.v1
CHARSET = utils.Charset('0123456789+-*()')


def dataset(paths, labels, batch_size, cache_bytes=utils.CACHE_BYTES, **options):
    """ocr.image_dataset over 32x96 grey images of the files at paths."""
    return ocr.image_dataset(utils.LabelledImages(paths, labels, CHARSET, (32, 96, 1), cache_bytes), batch_size,
                             **options)


ORIGINAL = utils.Architecture(image_height=60, image_width=180, image_channel=1, charset='0123456789+-*()',
                            cnn_count=4, out_channels=64, num_hidden=128, leakiness=0.01, max_stepsize=0,
                            rnn_cell='lstm', rnn_layers=2, bidirectional=False, rhn_depth=3)  # the original project's
SMALL = ORIGINAL._replace(image_height=32, image_width=96, cnn_count=3, out_channels=32, num_hidden=32,
                          charset='0123456789', rnn_layers=1)


@pytest.mark.parametrize('width, cnn_count, max_stepsize, steps', [
    (180, 4, 0, 12), (180, 4, 12, 12), (180, 4, 13, 23), (180, 4, 30, 45), (180, 4, 180, 180),
    (96, 3, 0, 12), (100, 4, 0, 7), (256, 4, 20, 32)])
def test_width_halves_until_it_would_drop_below_max_stepsize(width, cnn_count, max_stepsize, steps):
    arch = ORIGINAL._replace(image_width=width, cnn_count=cnn_count, max_stepsize=max_stepsize)
    assert ocr.time_steps(arch) == steps


def test_conv_table_filters_and_feature_shape():
    assert [unit[1] for unit in ocr.conv_units(ORIGINAL)] == [64, 128, 128, 64]
    assert [unit[1] for unit in ocr.conv_units(ORIGINAL._replace(cnn_count=6, out_channels=32))] == \
        [64, 128, 128, 128, 128, 32]
    assert ocr.feature_shape(ORIGINAL) == (12, 4, 64)  # 60 -> 30 -> 15 -> 8 -> 4 rows of 64 channels


@pytest.mark.parametrize('cnn_count, feature_height, heights', [(4, 3, (33, 48)), (4, 4, (49, 64)), (3, 4, (25, 32))])
def test_image_heights_are_exactly_those_whose_conv_features_have_that_height(cnn_count, feature_height, heights):
    arch = ORIGINAL._replace(cnn_count=cnn_count)
    assert ocr.image_heights(arch, feature_height) == heights
    feature_heights = {height: ocr.feature_shape(arch._replace(image_height=height))[1] for height in range(1, 80)}
    lowest, highest = heights
    assert [height for height, rows in feature_heights.items() if rows == feature_height] == list(
        range(lowest, highest + 1))


def build(arch, mode):
    images = v1.placeholder(tf.uint8, [None, arch.image_height, arch.image_width, arch.image_channel])
    label_ids = v1.placeholder(tf.int32, [None, None])
    with v1.variable_scope('ocr', reuse=v1.AUTO_REUSE):
        model = ocr.Recogniser(mode, arch, keep_prob=0.8)
        logits = model.logits(images)
        loss = tf.reduce_mean(model.losses(logits, label_ids))
        return images, label_ids, logits, loss, model.decode(logits, 'greedy')[0]


def minimize(loss, opt, global_step):
    """One-device training step as main.py builds it: gradients applied after the batch-norm updates."""
    updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
    return ocr.apply_gradients(opt.compute_gradients(loss), opt, global_step, updates)


@pytest.mark.parametrize('arch, optimizer, averaged', [
    (ORIGINAL, 'adam', False), (SMALL._replace(rnn_cell='gru', bidirectional=True), 'momentum', True),
    (SMALL._replace(rnn_cell='rhn', rnn_layers=2), 'adam', True)])
def test_memory_counts_every_weight_optimiser_slot_and_average_of_the_training_graph(arch, optimizer, averaged):
    with tf.Graph().as_default():
        _, _, _, loss, _ = build(arch, 'train')
        global_step = v1.train.get_or_create_global_step()
        minimize(loss, ocr.optimizer(optimizer, 0.01, 0.9, 0.999, 0.9), global_step)
        if averaged:
            ocr.MovingAverages(0.999, global_step).after(tf.no_op())
        weights = [v for v in v1.global_variables() if v.op.name.startswith('ocr/')]
        kept = sum(v.shape.num_elements() for v in weights)
        model = sum(v.shape.num_elements() for v in weights if not v.op.name.endswith((
            '/Adam', '/Adam_1', '/Momentum', '/ExponentialMovingAverage')))
    needed = ocr.memory_needed(arch, 8, optimizer, averaged)
    assert needed['weights'] == 4 * model == 4 * ocr.parameter_count(arch)
    slots_and_gradients = 4 * (kept - model) + needed['weights']  # the batch norms' moving statistics have no slots
    assert slots_and_gradients <= needed['copies in training'] <= 1.01 * slots_and_gradients


def test_memory_of_a_batch_grows_with_its_images_and_counts_the_first_conv_units_output():
    arch = ORIGINAL._replace(image_height=40, image_width=100)
    first_conv = 4 * 16384 * 40 * 100 * 64  # bytes of the first unit's output: the 17 GB
    reading, training = ocr.memory_needed(arch, 16384), ocr.memory_needed(arch, 16384, 'adam')
    assert first_conv > 16e9 and reading['activations'] >= 2 * first_conv
    assert training['activations'] > reading['activations'] == 2 * ocr.memory_needed(arch, 8192)['activations']
    assert ocr.memory_needed(ORIGINAL._replace(num_hidden=4096, rnn_layers=64), 1)['weights'] > 30e9


@pytest.mark.parametrize('batch_size', [1, 7])
def test_graph_takes_any_batch_size(batch_size):
    with tf.Graph().as_default():
        images, label_ids, logits, loss, decoded = build(ORIGINAL, 'infer')
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            feed = {images: np.zeros((batch_size, 60, 180, 1), np.uint8),
                    label_ids: np.tile([[1, 2, 3, -1]], (batch_size, 1))}
            logits_value, loss_value, decoded_value = session.run([logits, loss, decoded], feed)
    assert logits_value.shape == (12, batch_size, 16)
    assert np.isfinite(loss_value)
    assert decoded_value.shape[0] == batch_size


def test_greedy_reading_is_tensorflows_greedy_decoder_in_portable_ops():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(12, 50, 5)).astype(np.float32) * 3     # [time, batch, 4 classes and the blank]
    logits[:, 0, 4] += 20                                             # all blank: an empty reading
    logits[:, 1, 2] += 20                                             # one class held: one character
    logits[::2, 2, 1] += 20                                           # 1, blank, 1...: the class six times
    logits[1::2, 2, 4] += 20
    with tf.Graph().as_default(), v1.Session() as session:
        decoded, _ = tf.nn.ctc_greedy_decoder(logits, tf.fill([50], 12), merge_repeated=True)
        expected = tf.sparse.to_dense(decoded[0], default_value=-1)
        labels, confidence = ocr.greedy_reading(tf.constant(logits))
        expected, labels, confidence = session.run([expected, labels, confidence])
    log_softmax = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    assert labels.shape == (50, 12)
    assert [row[row >= 0].tolist() for row in labels] == [row[row >= 0].tolist() for row in expected]
    assert labels[0].tolist() == [-1] * 12 and labels[1].tolist() == [2] + [-1] * 11 and \
        labels[2].tolist() == [1] * 6 + [-1] * 6
    np.testing.assert_allclose(confidence, np.minimum(np.exp(log_softmax.max(axis=2).sum(axis=0)), 1), rtol=1e-5)


def test_dense_to_sparse_skips_padding_but_keeps_class_zero():
    with tf.Graph().as_default(), v1.Session() as session:
        sparse = session.run(ocr.dense_to_sparse(tf.constant([[0, 5, -1], [-1, -1, -1], [2, 0, 0]])))
    assert sparse.indices.tolist() == [[0, 0], [0, 1], [2, 0], [2, 1], [2, 2]]
    assert sparse.values.tolist() == [0, 5, 2, 0, 0]
    assert sparse.dense_shape.tolist() == [3, 3]


def test_an_empty_label_costs_the_blank_at_every_step_and_gives_no_error():
    with tf.Graph().as_default(), v1.Session() as session:
        model = ocr.Recogniser('val', SMALL)
        logits = tf.constant(np.random.default_rng(0).normal(size=(12, 3, 11)), tf.float32)   # [steps, b, classes]
        losses = model.losses(logits, tf.constant([[1, 2, -1], [-1, -1, -1], [4, -1, -1]]))
        single = model.losses(logits[:, 2:], tf.constant([[4]]))
        blank_only = -tf.reduce_sum(tf.nn.log_softmax(logits)[:, 1, -1])
        gradient = tf.gradients(tf.reduce_sum(losses), logits)[0]
        losses, single, blank_only, gradient = session.run([losses, single, blank_only, gradient])
    assert np.isclose(losses[1], blank_only) and np.isclose(losses[2], single[0])
    assert np.isfinite(gradient).all()
    # the empty label's gradient pushes every step towards the blank (the last class) only
    assert (gradient[:, 1, -1] < 0).all() and (gradient[:, 1, :-1] > 0).all()


def test_batch_norm_updates_moving_statistics_only_in_training():
    with tf.Graph().as_default():
        images, label_ids, _, loss, _ = build(SMALL, 'train')
        global_step = v1.train.get_or_create_global_step()
        step = minimize(loss, ocr.optimizer('adam', 1e-3, 0.9, 0.999, 0.9), global_step)
        with v1.variable_scope('ocr', reuse=True):
            eval_logits = ocr.Recogniser('val', SMALL).logits(images)
        moving_mean = [v for v in v1.global_variables() if v.name == 'ocr/unit_1/moving_mean:0'][0]
        feed = {images: np.random.default_rng(0).integers(0, 255, (4, 32, 96, 1)).astype(np.uint8),
                label_ids: [[1, 2]] * 4}
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            session.run(eval_logits, feed)
            assert not session.run(moving_mean).any()
            session.run(step, feed)
            assert session.run(moving_mean).any()


def test_folded_batch_norm_equals_batch_norm_on_the_moving_statistics():
    rng = np.random.default_rng(0)
    with tf.Graph().as_default(), v1.Session() as session:
        images = tf.constant(rng.random((2, 8, 12, 3)), tf.float32)
        folded = ocr.conv_unit(images, 'unit', 4, [2, 2], 0.1, training=False)
        with v1.variable_scope('unit', reuse=True):
            kernel = v1.get_variable('kernel')
            gamma, beta, mean, variance = ocr.batch_norm_variables(4)
        session.run(v1.global_variables_initializer())
        for variable, low in ((gamma, 0.5), (beta, -1.0), (mean, -1.0), (variance, 0.2)):
            session.run(variable.assign(rng.uniform(low, 2.0, 4).astype(np.float32)))
        normalised = (tf.nn.conv2d(images, kernel, 1, 'SAME') - mean) * tf.math.rsqrt(variance + 1e-5) * gamma + beta
        expected = tf.nn.max_pool2d(tf.nn.leaky_relu(normalised, 0.1), 2, 2, 'SAME')
        folded, expected = session.run([folded, expected])
    assert folded.shape == (2, 4, 6, 4)
    np.testing.assert_allclose(folded, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_model_overfits_a_small_set(tmp_path):
    """Loss, labels and both decoders agree: 32 images are learnt to 100% sequence accuracy."""
    labels = random_labels(32, seed=5)
    paths = write_text_images(str(tmp_path), labels, seed=5)
    charset = utils.Charset(SMALL.charset)
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        train_batch = v1.data.make_one_shot_iterator(dataset(paths, labels, 16, shuffle=True, repeat=-1)).get_next()
        eval_batch = v1.data.make_initializable_iterator(dataset(paths, labels, 32))
        with v1.variable_scope('ocr'):
            model = ocr.Recogniser('train', SMALL, keep_prob=1.0)
            loss = tf.reduce_mean(model.losses(model.logits(train_batch['images']), train_batch['label_ids']))
        step = minimize(loss, ocr.optimizer('adam', 6e-3, 0.9, 0.999, 0.9), v1.train.get_or_create_global_step())
        eval_next = eval_batch.get_next()
        with v1.variable_scope('ocr', reuse=True):
            reader = ocr.Recogniser('val', SMALL)
            logits = reader.logits(eval_next['images'])
            decoded = {decoder: reader.decode(logits, decoder)[0] for decoder in ('beam', 'greedy')}
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            for _ in range(8):  # at most 400 steps, read back every 50
                for _ in range(50):
                    session.run(step)
                session.run(eval_batch.initializer)
                predicted, truth = session.run([decoded, eval_next['labels']])
                readings = {decoder: [charset.decode(row) for row in rows] for decoder, rows in predicted.items()}
                truth = [t.decode() for t in truth]
                if all(utils.accuracy_and_cer(rows, truth)[0] == 1.0 for rows in readings.values()):
                    break
    for decoder, rows in readings.items():
        assert utils.accuracy_and_cer(rows, truth)[0] == 1.0, (decoder, list(zip(rows, truth)))


@pytest.mark.parametrize('schedule, boundaries, warmup, expected', [
    ('exponential', (), 0, {0: 1.0, 99: 1.0, 100: 0.5, 250: 0.25}),
    ('cosine', (), 0, {0: 1.0, 50: 0.5, 100: 0.0, 500: 0.0}),
    ('piecewise', (30, 60), 0, {0: 1.0, 29: 1.0, 30: 0.5, 60: 0.25, 1000: 0.25}),
    ('exponential', (), 10, {0: 0.1, 4: 0.5, 9: 1.0, 100: 0.5}),
])
def test_learning_rate_schedules(schedule, boundaries, warmup, expected):
    with tf.Graph().as_default(), v1.Session() as session:
        step = v1.placeholder(tf.int64, [])
        rate = ocr.learning_rate(step, schedule, 1.0, 100, 0.5, boundaries, warmup)
        for at, value in expected.items():
            assert session.run(rate, {step: at}) == pytest.approx(value, abs=1e-6), (schedule, at)


# --- the input pipeline ----------------------------------------------------------

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
        batches = run_dataset(dataset(paths, labels, 3))
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
        kept = run_dataset(dataset(paths, None, 5, keep_unreadable=True))
        dropped = run_dataset(dataset(paths, ['1', '2', '3'], 5))
    assert kept[0]['ok'].tolist() == [True, False, True]
    assert [label.decode() for label in dropped[0]['labels']] == ['1', '3']
    assert paths[1] in caplog.text


def test_augmentation_changes_images_but_keeps_shape_type_and_labels(tmp_path):
    labels = random_labels(32, seed=4)
    paths = write_text_images(str(tmp_path), labels)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        plain = run_dataset(dataset(paths, labels, 32))[0]
        batch = run_dataset(dataset(paths, labels, 32, augment=True))[0]
    assert batch['images'].tolist() == plain['images'].tolist() and batch['labels'].tolist() == plain['labels'].tolist()
    augmented = batch['augmented']
    assert augmented.shape == plain['images'].shape and augmented.dtype == np.uint8
    changed = np.abs(augmented.astype(int) - plain['images']).mean(axis=(1, 2, 3)) > 1
    assert changed.mean() > 0.8  # each change is drawn per image: few images draw none
    # the text is still there: no image is washed out to one level (contrast is lowered, never to nothing)
    assert (augmented.reshape(32, -1).std(axis=1) > 3).all()


@pytest.mark.parametrize('step, share', [(0, 0.0), (250, ocr.AUGMENTED_SHARE / 2), (500, ocr.AUGMENTED_SHARE),
                                         (900, ocr.AUGMENTED_SHARE)])
def test_training_takes_augmented_images_in_a_share_rising_over_half_the_schedule(step, share):
    batch = {'images': np.zeros((4000, 2, 2, 1), np.uint8), 'augmented': np.ones((4000, 2, 2, 1), np.uint8)}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        images = session.run(ocr.ramped_augmentation(batch, tf.constant(step, tf.int64), tf.constant(1000.0)))
    assert abs(images.mean() - share) < 0.03


def test_augmentation_fades_some_text_but_keeps_it_readable():
    text = np.full((32, 96, 1), 255, np.uint8)
    cv2.putText(text, '1234', (3, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 0, 2)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        tf.compat.v1.set_random_seed(0)
        augmented = session.run(ocr.augment_images(tf.constant(np.repeat(text[None], 1000, axis=0))))
    contrast = augmented.reshape(1000, -1).std(axis=1) / text.std()
    assert (contrast < 0.6).sum() >= 50  # paler text, as a faded print shows it
    assert contrast.min() > 0.25  # contrast at half at most, strokes, blur and brightness taking a little more


def test_warp_without_changes_is_the_identity():
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        with mock.patch.object(ocr, 'per_image', lambda size, low, high, share, neutral=0.0:
                               tf.fill([size], neutral)):
            transforms = session.run(ocr.warp_transforms(2, 32, 96))
    assert np.allclose(transforms, [[1, 0, 0, 0, 1, 0, 0, 0]] * 2, atol=1e-5)


def test_pipeline_reshuffles_every_epoch(tmp_path):
    labels = [str(i) for i in range(10)]
    paths = write_text_images(str(tmp_path), labels)
    with tf.Graph().as_default():
        batches = run_dataset(dataset(paths, labels, 10, shuffle=True,
                                                  seed=3, repeat=2))
    first, second = [[label.decode() for label in b['labels']] for b in batches]
    assert sorted(first) == sorted(second) == sorted(labels)
    assert first != second


def test_streaming_pipeline_reads_what_the_cached_one_does(tmp_path):
    labels = random_labels(9, seed=6)
    paths = write_text_images(str(tmp_path), labels)
    with tf.Graph().as_default():
        cached = run_dataset(dataset(paths, labels, 4))
        streamed = run_dataset(dataset(paths, labels, 4, cache_bytes=0))
    assert len(cached) == len(streamed) == 3
    for a, b in zip(cached, streamed):
        assert (a['images'] == b['images']).all() and a['labels'].tolist() == b['labels'].tolist()


def test_served_decoding_skips_bad_images_without_failing_the_batch(tmp_path):
    good = cv2.imencode('.png', np.full((30, 90), 255, np.uint8))[1].tobytes()
    buffer = io.BytesIO()
    Image.new('L', (90, 30), 255).save(buffer, 'GIF')
    batches = [[good, b'not an image', png_claiming(40000, 40000), good[:60], buffer.getvalue()], []]
    with tf.Graph().as_default():
        image_bytes = tf.compat.v1.placeholder(tf.string, [None])
        images, where = ocr.decode_image_batch(image_bytes, 32, 96, 1, utils.MAX_IMAGE_PIXELS)
        with tf.compat.v1.Session() as session:
            results = [session.run([images, where], {image_bytes: batch}) for batch in batches]
    (images, where), (empty_images, empty_where) = results
    assert where.tolist() == [0, -1, -1, -1, 1] and images.shape == (3, 32, 96, 1)
    assert (images[:2] == 255).all()  # the PNG and the GIF, each read whole
    assert empty_where.shape == (0,) and empty_images.shape == (1, 32, 96, 1)
