"""The RNN cells and stacks of cnn_lstm_otc_ocr: shapes, gradients, one step against numpy, overfitting, and the
model's RNN (uni- and bidirectional) for every --rnn_cell."""
import numpy as np
import pytest
import tensorflow as tf

import cnn_lstm_otc_ocr as ocr
import utils

v1 = tf.compat.v1
v1.disable_eager_execution()

KINDS = sorted(ocr.RNN_CELLS)
BATCH, STEPS, INPUT_SIZE, UNITS, LAYERS, RHN_DEPTH = 3, 4, 5, 6, 2, 3

# The state of one layer of each kind, as sizes.
LAYER_STATE_SIZES = {'lstm': (UNITS, UNITS), 'gru': UNITS, 'hlstm': (UNITS, UNITS), 'rhn': UNITS,
                     'nlstm': (UNITS, UNITS, UNITS)}


def small_stack(kind, keep_prob=1.0, input_size=INPUT_SIZE, units=UNITS, name='stack'):
    return ocr.rnn_stack(kind, input_size, units, LAYERS, keep_prob, RHN_DEPTH, name)


def run_stack(cell, inputs):
    """dynamic_rnn over inputs [b, t, n] -> (outputs, final state) tensors."""
    return v1.nn.dynamic_rnn(cell, tf.constant(inputs, tf.float32), dtype=tf.float32)


def random_inputs(seed=0, shape=(BATCH, STEPS, INPUT_SIZE)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- numpy references, written from the papers' equations -------------------

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gate_blocks(x, h, kernel, bias, count):
    """[x, h] W + b cut into `count` blocks of h's width."""
    pre = np.concatenate([x, h], axis=1) @ kernel + bias
    return np.split(pre, count, axis=1)


def np_lstm(w, x, state):
    c, h = state
    i, f, o, g = gate_blocks(x, h, w['kernel'], w['bias'], 4)
    c = sigmoid(f + 1) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return h, (c, h)


def np_gru(w, x, h):
    r, z = [sigmoid(gate) for gate in gate_blocks(x, h, w['gates/kernel'], w['gates/bias'], 2)]
    (n,) = gate_blocks(x, r * h, w['candidate/kernel'], w['candidate/bias'], 1)
    h = z * h + (1 - z) * np.tanh(n)
    return h, h


def np_rhn(w, x, s):
    for step in range(1, RHN_DEPTH + 1):
        kernel, bias = w['micro_step_%d/kernel' % step], w['micro_step_%d/bias' % step]
        pre = (np.concatenate([x, s], 1) if step == 1 else s) @ kernel + bias
        h, t = np.tanh(pre[:, :UNITS]), sigmoid(pre[:, UNITS:])
        s = h * t + s * (1 - t)
    return s, s


def np_nlstm(w, x, state):
    h, inner_c, outer_c = state
    i, f, o, g = gate_blocks(x, h, w['kernel'], w['bias'], 4)
    inner_x, inner_h = sigmoid(i) * g, sigmoid(f + 1) * outer_c
    ii, fi, oi, gi = gate_blocks(inner_x, inner_h, w['inner/kernel'], w['inner/bias'], 4)
    inner_c = sigmoid(fi + 1) * inner_c + sigmoid(ii) * np.tanh(gi)
    outer_c = sigmoid(oi) * np.tanh(inner_c)
    h = sigmoid(o) * np.tanh(outer_c)
    return h, (h, inner_c, outer_c)


def np_hlstm(w, x, state, lower_c):
    c_prev, h = state
    w_ci, w_cf, w_co = w['peepholes']
    i, f, o, g = gate_blocks(x, h, w['kernel'], w['bias'], 4)
    c = sigmoid(f + 1 + w_cf * c_prev) * c_prev + sigmoid(i + w_ci * c_prev) * np.tanh(g)
    if lower_c is not None:
        w_cd, w_ld = w['depth_gate/peepholes']
        d = sigmoid(x @ w['depth_gate/kernel'] + w_cd * c_prev + w_ld * lower_c + w['depth_gate/bias'])
        c = c + d * lower_c
    h = sigmoid(o + w_co * c) * np.tanh(c)
    return h, (c, h)


def np_stack_step(kind, weights, x, states):
    """One time step of LAYERS layers; weights: {'layer_1/kernel': array, ...}."""
    new_states, lower_c = [], None
    for layer, state in enumerate(states):
        prefix = 'layer_%d/' % (layer + 1)
        w = {name[len(prefix):]: value for name, value in weights.items() if name.startswith(prefix)}
        if kind == 'hlstm':
            x, state = np_hlstm(w, x, state, lower_c)
            lower_c = state[0]
        else:
            x, state = {'lstm': np_lstm, 'gru': np_gru, 'rhn': np_rhn, 'nlstm': np_nlstm}[kind](w, x, state)
        new_states.append(state)
    return x, tuple(new_states)


# --- tests ---------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
def test_output_and_state_shapes(kind):
    with tf.Graph().as_default(), v1.Session() as sess:
        cell = small_stack(kind)
        assert cell.state_size == (LAYER_STATE_SIZES[kind],) * LAYERS
        assert cell.output_size == UNITS
        outputs, state = run_stack(cell, random_inputs())
        sess.run(v1.global_variables_initializer())
        outputs, state = sess.run([outputs, state])
    assert outputs.shape == (BATCH, STEPS, UNITS)
    expected = tf.nest.map_structure(lambda size: (BATCH, size), cell.state_size)
    assert tf.nest.map_structure(np.shape, state) == expected
    assert np.all(np.isfinite(outputs))
    assert not np.array_equal(outputs[0], outputs[1])                          # the inputs reach the outputs


@pytest.mark.parametrize('kind', KINDS)
def test_gradients_reach_every_variable_of_every_layer(kind):
    with tf.Graph().as_default(), v1.Session() as sess:
        outputs, _ = run_stack(small_stack(kind), random_inputs())
        loss = tf.reduce_sum(outputs * tf.constant(random_inputs(1, (BATCH, STEPS, UNITS))))
        variables = v1.trainable_variables()
        gradients = tf.gradients(loss, variables)
        assert {v.name.split('/')[1] for v in variables} == {'layer_%d' % (k + 1) for k in range(LAYERS)}
        assert [v.name for v, gradient in zip(variables, gradients) if gradient is None] == []
        sess.run(v1.global_variables_initializer())
        norms = sess.run([tf.norm(gradient) for gradient in gradients])
    assert [v.name for v, norm in zip(variables, norms) if norm == 0] == []


@pytest.mark.parametrize('kind', KINDS)
def test_one_step_matches_numpy(kind):
    rng = np.random.default_rng(2)
    with tf.Graph().as_default(), v1.Session() as sess:
        cell = small_stack(kind)
        states = tf.nest.map_structure(lambda size: rng.normal(size=(BATCH, size)).astype(np.float32),
                                       cell.state_size)
        inputs = rng.normal(size=(BATCH, INPUT_SIZE)).astype(np.float32)
        output, new_state = cell(tf.constant(inputs), tf.nest.map_structure(tf.constant, states))
        variables = {v.name[len('stack/'):-len(':0')]: v for v in v1.trainable_variables()}     # 'layer_1/kernel'
        weights = {name: rng.normal(scale=0.5, size=v.shape).astype(np.float32) for name, v in variables.items()}
        sess.run([v.assign(weights[name]) for name, v in variables.items()])
        output, new_state = sess.run([output, new_state])
    expected_output, expected_state = np_stack_step(kind, weights, inputs, states)
    np.testing.assert_allclose(output, expected_output, rtol=1e-4, atol=1e-5)
    tf.nest.map_structure(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5),
                          new_state, expected_state)
    assert not np.allclose(output, 0.0)


@pytest.mark.parametrize('kind', KINDS)
def test_dropout_in_every_variant(kind):
    with tf.Graph().as_default(), v1.Session() as sess:
        v1.set_random_seed(0)
        outputs, _ = run_stack(small_stack(kind, keep_prob=0.5), random_inputs())
        sess.run(v1.global_variables_initializer())
        first, second = sess.run(outputs), sess.run(outputs)
    assert 0.25 < np.mean(first == 0.0) < 0.75
    assert not np.array_equal(first, second)


@pytest.mark.parametrize('kind', KINDS)
def test_overfits_a_memory_task(kind):
    """Only the first step's input (a noisy one-hot class) is not zero, and every later step must name its class:
    a cell that loses its state cannot do better than the class frequencies (loss ln 3)."""
    steps, classes = 6, 3
    labels = np.arange(9) % classes
    inputs = np.zeros((len(labels), steps, classes), np.float32)
    inputs[:, 0] = np.eye(classes)[labels] + 0.3 * random_inputs(3, (len(labels), classes))
    targets = np.repeat(labels[:, None], steps - 1, axis=1)                   # [9, steps - 1]
    with tf.Graph().as_default(), v1.Session() as sess:
        v1.set_random_seed(0)
        outputs, _ = run_stack(small_stack(kind, input_size=classes, units=16), inputs)
        logits = ocr.dense(outputs[:, 1:], classes, 'logits')                  # [9, steps - 1, classes]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))
        train = v1.train.AdamOptimizer(0.02).minimize(loss)
        sess.run(v1.global_variables_initializer())
        initial = sess.run(loss)
        for _ in range(150):
            sess.run(train)
        final = sess.run(loss)
    assert final < initial / 100, (initial, final)


def small_arch(rnn_cell, bidirectional):
    return utils.Architecture(image_height=32, image_width=64, image_channel=1, charset='0123456789+-*()',
                            cnn_count=2, out_channels=8, num_hidden=8, leakiness=0.01, max_stepsize=0,
                            rnn_cell=rnn_cell, rnn_layers=2, bidirectional=bidirectional, rhn_depth=2)


def test_bidirectional_rnn_concatenates_a_forward_and_a_backward_stack():
    arch = small_arch('lstm', bidirectional=True)
    steps, features = ocr.time_steps(arch), random_inputs(4, (BATCH, ocr.time_steps(arch), 10))
    changed = features.copy()
    changed[:, -1] += 1.0
    with tf.Graph().as_default(), v1.Session() as sess:
        inputs = v1.placeholder(tf.float32, [None, steps, 10])
        outputs = ocr.Recogniser('val', arch).rnn(inputs)
        names = {v.name.split('/layer_')[0] for v in v1.trainable_variables()}
        sess.run(v1.global_variables_initializer())
        before, after = [sess.run(outputs, {inputs: batch}) for batch in (features, changed)]
    assert names == {'rnn/fw', 'rnn/bw'}
    assert before.shape == (BATCH, steps, 2 * arch.num_hidden)
    forward, backward = slice(0, arch.num_hidden), slice(arch.num_hidden, None)
    # Changing the last step leaves the forward outputs before it alone, and reaches every backward one.
    np.testing.assert_array_equal(before[:, :-1, forward], after[:, :-1, forward])
    assert np.all(np.any(before[:, :, backward] != after[:, :, backward], axis=2))


@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('rnn_cell', KINDS)
def test_model_logits_for_every_cell_looped_and_unrolled(rnn_cell, bidirectional):
    """Training's logits have their shape; the graph of LiteRT and ONNX (the cells copied per time step) gives the
    logits of the dynamic_rnn loop that val and infer run."""
    arch = small_arch(rnn_cell, bidirectional)
    pixels = np.random.default_rng(5).integers(0, 256, (2, 32, 64, 1), dtype=np.uint8)
    with tf.Graph().as_default() as graph, v1.Session() as sess, v1.variable_scope('ocr', reuse=v1.AUTO_REUSE):
        images = tf.constant(pixels)
        training = ocr.Recogniser('train', arch, keep_prob=0.8).logits(images)
        looped = ocr.Recogniser('infer', arch).logits(images)
        unrolled = ocr.Recogniser('infer', arch, unrolled=True).logits(images)
        directions = {v.name.split('/')[2] for v in v1.trainable_variables() if v.name.startswith('ocr/rnn/')}
        loops = [op for op in graph.get_operations() if op.type in ('While', 'Enter')]
        sess.run(v1.global_variables_initializer())
        training, looped, unrolled = sess.run([training, looped, unrolled])
    assert training.shape == unrolled.shape == (ocr.time_steps(arch), 2, len(arch.charset) + 1)
    assert directions == ({'fw', 'bw'} if bidirectional else {'fw'})
    assert loops  # the loop is there, so the comparison means something
    np.testing.assert_allclose(unrolled, looped, rtol=1e-5, atol=1e-5)


def test_bad_rnn_settings_are_refused_with_their_value():
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match="'vanilla'"):
            ocr.rnn_stack('vanilla', INPUT_SIZE, UNITS, LAYERS, 1.0, RHN_DEPTH, 'stack')
        with pytest.raises(ValueError, match='rnn_layers=0'):
            ocr.rnn_stack('gru', INPUT_SIZE, UNITS, 0, 1.0, RHN_DEPTH, 'stack')
        with pytest.raises(ValueError, match='rhn_depth=0'):
            ocr.rnn_stack('rhn', INPUT_SIZE, UNITS, LAYERS, 1.0, 0, 'stack')

