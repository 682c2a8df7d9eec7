"""--num_gpus towers on logical CPU devices: the towers' gradients are those of one tower on the whole batch, the
global step moves once per step, and a checkpoint of two towers reads the same on one device."""
import re

import numpy as np
import pytest
import tensorflow as tf

import cnn_lstm_otc_ocr as ocr
import main
import utils
from conftest import SMALL_MODEL_FLAGS, run_cli
from test_main import folders

v1 = tf.compat.v1
SMALL = utils.Architecture(image_height=32, image_width=96, image_channel=1, charset='0123456789', cnn_count=3,
                         out_channels=32, num_hidden=32, leakiness=0.01, max_stepsize=0, rnn_cell='lstm',
                         rnn_layers=1, bidirectional=False, rhn_depth=3)  # conftest.SMALL_MODEL_FLAGS
HYPERPARAMETERS = ocr.Hyperparameters(
    optimizer='adam', initial_learning_rate=1e-3, lr_schedule='exponential', decay_steps=10000, decay_rate=0.98,
    lr_boundaries=[], warmup_steps=0, beta1=0.9, beta2=0.999, momentum=0.9, keep_prob=1.0, clip_norm=0.0,
    loss_scaling=False, moving_average_decay=0.0)
TWO_CPUS = v1.ConfigProto(device_count={'CPU': 2}, allow_soft_placement=True)  # as main.session_config
DEVICES = ['/cpu:0', '/cpu:1']


@pytest.fixture
def flags():
    """Parses main.py's flags in this process (small model, two CPU towers, no dropout) and forgets them after."""
    def parse(*extra):
        utils.FLAGS(['main.py', *SMALL_MODEL_FLAGS, '--charset=0123456789', '--num_gpus=2', '--tower_device=cpu',
                     '--output_keep_prob=1.0', *extra])
        return utils.architecture_from_flags()
    yield parse
    utils.FLAGS.unparse_flags()


def placeholder_batch():
    return {'images': v1.placeholder(tf.uint8, [None, 32, 96, 1]),
            'label_ids': v1.placeholder(tf.int32, [None, None]), 'paths': v1.placeholder(tf.string, [None])}


def random_feed(batch, size):
    rng = np.random.default_rng(size)
    labels = [[int(d) for d in rng.integers(0, 10, 3)] + [-1] for _ in range(size)]
    return {batch['images']: rng.integers(0, 256, (size, 32, 96, 1)).astype(np.uint8), batch['label_ids']: labels,
            batch['paths']: ['%d.png' % i for i in range(size)]}


def single_tower_gradients(arch, images, label_ids, variables):
    """Gradients of the mean loss of one plain model on a batch, sharing the variables of scope 'ocr'."""
    with v1.variable_scope('ocr', reuse=True):
        model = ocr.Recogniser('train', arch, keep_prob=1.0)
        loss = tf.reduce_mean(model.losses(model.logits(images), label_ids))
    return tf.gradients(loss, variables)


@pytest.mark.parametrize('batch_size', [4, 5])
def test_two_towers_give_the_gradients_of_their_shards_combined(batch_size):
    """Even batch: the towers' gradients are the mean of one tower's gradients on each half. Odd (a last partial
    batch, shards of 3 and 2): each half weighs by its images, the gradient of the batch's mean loss."""
    arch = SMALL
    with tf.Graph().as_default():
        batch = placeholder_batch()
        with v1.variable_scope('ocr'):
            _, tower_gradients, _ = ocr.towers(arch, batch, v1.train.GradientDescentOptimizer(1.0), 1.0, DEVICES,
                                               '/cpu:0')
        gradients, variables = zip(*ocr.add_tower_gradients(tower_gradients))
        first = (batch_size + 1) // 2
        halves = [single_tower_gradients(arch, batch['images'][rows], batch['label_ids'][rows], variables)
                  for rows in (slice(None, first), slice(first, None))]
        with v1.Session(config=TWO_CPUS) as session:
            session.run(v1.global_variables_initializer())
            towers, (head, tail) = session.run([gradients, halves], random_feed(batch, batch_size))
    assert len(towers) == len(variables) == 13  # 3 conv units x (kernel, gamma, beta), the LSTM, the logits
    for variable, tower, head_gradient, tail_gradient in zip(variables, towers, head, tail):
        expected = (first * head_gradient + (batch_size - first) * tail_gradient) / batch_size
        np.testing.assert_allclose(tower, expected, rtol=1e-4, atol=1e-5, err_msg=variable.name)


def test_one_update_per_step_variables_on_the_cpu_and_each_tower_on_its_device():
    with tf.Graph().as_default():
        batch = placeholder_batch()
        global_step = v1.train.get_or_create_global_step()
        training, _, _ = ocr.training_graph(SMALL, batch, HYPERPARAMETERS, global_step, DEVICES)
        devices = {op.name: op.device for op in v1.get_default_graph().get_operations()}
        moving_mean = [v for v in v1.global_variables() if v.name == 'ocr/unit_1/moving_mean:0'][0]
        with v1.Session(config=TWO_CPUS) as session:
            session.run(v1.global_variables_initializer())
            steps = [session.run(training, random_feed(batch, 4)) for _ in range(2)]
            assert session.run(global_step) == 2 and session.run(moving_mean).any()
    assert [fetched['step'] for fetched in steps] == [1, 2]
    assert steps[0]['losses'].shape == (4,) and steps[0]['loss'] == pytest.approx(steps[0]['losses'].mean())
    assert {devices['ocr/unit_1/kernel'], devices['ocr/unit_1/moving_mean']} == {'/device:CPU:0'}
    assert devices['ocr/tower_0/unit_1/Conv2D'] == '/device:CPU:0'
    assert devices['ocr/tower_1/unit_1/Conv2D'] == '/device:CPU:1'


def test_validation_and_checkpoints_read_the_moving_averages_of_the_weights(tmp_path):
    """Each step moves the averages min(decay, (1 + step) / (10 + step)) of the way to the weights (the trained ones
    and the batch norms' statistics); the validation reader reads the averages, and so does a plain reading graph
    restored from a checkpoint of saved()."""
    with tf.Graph().as_default():
        batch = placeholder_batch()
        training, _, averages = ocr.training_graph(SMALL, batch, HYPERPARAMETERS._replace(moving_average_decay=0.5),
                                                   v1.train.get_or_create_global_step(), ['/cpu:0'])
        with averages.reading():
            _, validated = ocr.reading_graph(SMALL, batch['images'], 'greedy', mode='val')      # confidence [b]
        weights = ocr.model_weights()  # the batch norms' moving statistics are averaged too
        trained = len(v1.trainable_variables())
        averaged = [averages.average(v) for v in weights]
        saver = v1.train.Saver(averages.saved())
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            session.run(averages.restart())
            expected = session.run(weights)
            for step in (1, 2, 3):
                session.run(training, random_feed(batch, 4))
                decay = min(0.5, (1 + step) / (10 + step))
                expected = [decay * average + (1 - decay) * value
                            for average, value in zip(expected, session.run(weights))]
            last, averages_now = session.run([weights, averaged])
            images = random_feed(batch, 6)[batch['images']]
            confidence = session.run(validated, {batch['images']: images})
            saver.save(session, str(tmp_path / 'model'))
    assert trained == 13 and len(weights) == 13 + 2 * 3 and all(np.abs(value - average).max() > 1e-6
                                      for value, average in zip(last, averages_now))
    for variable, average, wanted in zip(weights, averages_now, expected):
        np.testing.assert_allclose(average, wanted, rtol=1e-4, atol=1e-6, err_msg=variable.name)
    with tf.Graph().as_default():
        placeholder = v1.placeholder(tf.uint8, [None, 32, 96, 1])
        _, restored = ocr.reading_graph(SMALL, placeholder, 'greedy', mode='val')
        with v1.Session() as session:
            v1.train.Saver().restore(session, str(tmp_path / 'model'))
            np.testing.assert_allclose(session.run(restored, {placeholder: images}), confidence, rtol=1e-4)


def test_only_a_batch_smaller_than_the_towers_is_dropped():
    with tf.Graph().as_default():
        dataset = tf.data.Dataset.from_tensor_slices({'images': np.zeros((7, 2, 2, 1), np.uint8)}).batch(3)
        sizes = ocr.batches_for_towers(dataset, 2).map(lambda batch: tf.shape(batch['images'])[0])
        following = v1.data.make_one_shot_iterator(sizes).get_next()
        with v1.Session() as session:
            assert [session.run(following) for _ in range(2)] == [3, 3]
            with pytest.raises(tf.errors.OutOfRangeError):
                session.run(following)


def test_clipping_scales_the_gradients_to_the_global_norm_together():
    with tf.Graph().as_default(), v1.Session() as session:
        variables = [tf.Variable(0.0), tf.Variable(0.0)]
        pairs = [(tf.constant(3.0), variables[0]), (tf.constant(4.0), variables[1])]
        clipped, norm = ocr.clip_gradients(pairs, 1.0)
        clipped, norm = session.run([[gradient for gradient, _ in clipped], norm])
        unclipped = session.run([gradient for gradient, _ in ocr.clip_gradients(pairs, 0.0)[0]])
    assert norm == pytest.approx(5.0) and clipped == pytest.approx([0.6, 0.8]) and unclipped == [3.0, 4.0]


def test_a_batch_the_towers_cannot_share_and_absent_gpus_are_refused(flags):
    flags('--batch_size=5')
    with pytest.raises(utils.UserError, match='--batch_size=5 does not split evenly between --num_gpus=2 towers'):
        main.training_towers()
    flags('--num_gpus=64', '--tower_device=gpu')
    with pytest.raises(utils.UserError, match=r'--num_gpus=64 but \d+ GPU\(s\) are visible: .*--tower_device=cpu'):
        main.tower_devices()


@pytest.mark.slow
def test_a_checkpoint_of_two_towers_reads_the_same_on_one_device(dataset):
    next((dataset / 'train').glob('0_*.png')).unlink()  # 49 images: a last batch of 1, fewer than the towers
    result = run_cli('--mode=train', '--batch_size=16', '--num_epochs=1', '--validation_steps=100', '--num_gpus=2',
                     '--tower_device=cpu', *SMALL_MODEL_FLAGS, *folders(dataset))
    assert result.returncode == 0, result.stderr
    assert 'step 3: saved checkpoint' in result.stdout and not re.search(r'^step 4\b', result.stdout, re.M), \
        result.stdout  # the last image dropped
    assert 'finished --num_epochs=1' in result.stdout
    result = run_cli('--mode=val', '--num_gpus=2', '--tower_device=cpu', '--batch_size=5', *folders(dataset))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith('images=23')
    readings = []
    for devices in (['--num_gpus=0'], ['--num_gpus=2', '--tower_device=cpu']):
        result = run_cli('--mode=infer', '--decoder=greedy', *devices, *folders(dataset))
        assert result.returncode == 0, result.stderr
        readings.append((dataset / 'result.txt').read_text())
    assert readings[0] == readings[1] and len(readings[0].splitlines()) == 11
