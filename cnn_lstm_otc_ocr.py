"""Everything TensorFlow: the recogniser's graph, the input pipeline that feeds it, its export formats and the
runtime of a training cluster.

The graph: images -> convnet -> stacked RNN -> per-time-step logits -> CTC loss / decoder. A uint8 image batch
[batch, height, width, channels] goes through `cnn_count` conv units (the CONV_UNITS table), whose feature columns
become a sequence of `time_steps` vectors for the RNN layers; a dense layer gives logits over the charset plus the
CTC blank (the last class). Nothing here reads flags or the user's files: utils.LabelledImages hands the pipeline
images by number.
"""
import collections
import contextlib
import json
import math
import os
import time

import tensorflow as tf

from utils import UserError, check_port_free, log, wait_for_ps_tasks, watchdog

v1 = tf.compat.v1

# The conv net, one row per unit: conv 3x3 of `filters` -> batch norm -> leaky ReLU -> max-pool SAME, 2x2, or 2x1
# (the height only) once halving the width again would leave fewer than max_stepsize time steps. A model uses the
# first cnn_count units, the last of them with out_channels filters; a deeper one repeats the last row.
CONV_UNITS = (
    # name    filters    output at the defaults: 40x120 grey, cnn_count 4, out_channels 64, max_stepsize 16
    ('unit_1', 64),      # [b, 20, 60, 64]
    ('unit_2', 128),     # [b, 10, 30, 128]
    ('unit_3', 128),     # [b, 5, 30, 128]: pooled 2x1, as halving 30 would leave fewer than 16 steps
    ('unit_4', 128),     # [b, 3, 30, 64]: out_channels, the last unit
)


# --- shapes ------------------------------------------------------------------

def conv_units(arch):
    """The conv table of an architecture: a (name, filters, pool height, pool width) row per unit."""
    units, width = [], arch.image_width
    for index in range(arch.cnn_count):
        filters = CONV_UNITS[min(index, len(CONV_UNITS) - 1)][1] if index < arch.cnn_count - 1 else arch.out_channels
        halve_width = math.ceil(width / 2) >= arch.max_stepsize
        width = math.ceil(width / 2) if halve_width else width
        units.append(('unit_%d' % (index + 1), filters, 2, 2 if halve_width else 1))
    return units


def feature_shape(arch):
    """(time_steps, feature height, channels) of the convnet output, from the conv table."""
    height, width = arch.image_height, arch.image_width
    for _, filters, pool_height, pool_width in conv_units(arch):
        height, width = math.ceil(height / pool_height), math.ceil(width / pool_width)
    return width, height, conv_units(arch)[-1][1]


def image_heights(arch, feature_height):
    """(lowest, highest) image height whose conv features are feature_height high: each unit's pool divides it."""
    scale = math.prod(pool_height for _, _, pool_height, _ in conv_units(arch))
    return (feature_height - 1) * scale + 1, feature_height * scale


def time_steps(arch):
    """Number of RNN time steps (CTC's sequence length) for every image of this architecture."""
    return feature_shape(arch)[0]


# --- memory -------------------------------------------------------------------

OPTIMIZER_SLOTS = {'adam': 2, 'momentum': 1}  # variables an optimiser keeps per weight
RNN_VALUES = 8  # floats a recurrent layer keeps per unit and time step for the backward pass (gates, memory, output)


def parameter_count(arch):
    """The model's weights, counted in a scratch graph of its variables (nothing is allocated)."""
    with tf.Graph().as_default():
        Recogniser('infer', arch).logits(v1.placeholder(tf.uint8, [None, arch.image_height, arch.image_width,
                                                                   arch.image_channel]))
        return sum(variable.shape.num_elements() for variable in v1.global_variables())


def memory_needed(arch, batch_size, optimizer=None, averaged=False):
    """Estimated bytes of a training step (with its optimizer, and the weights' MovingAverages if averaged) or of
    reading a batch (optimizer None), by part: the weights, their copies in training (the optimiser's slots, the
    gradients and the averages), and one batch's activations (in training the conv units' outputs and batch norms,
    and the RNN's gates at every time step, are kept for the backward pass; in reading, the largest conv unit's
    input and output)."""
    weights = 4 * parameter_count(arch)
    height, width, conv = arch.image_height, arch.image_width, []
    for _, filters, pool_height, pool_width in conv_units(arch):
        conv.append(4 * batch_size * height * width * filters)
        height, width = math.ceil(height / pool_height), math.ceil(width / pool_width)
    directions = 2 if arch.bidirectional else 1
    rnn = 4 * batch_size * time_steps(arch) * arch.num_hidden * directions * RNN_VALUES * (
        arch.rhn_depth if arch.rnn_cell == 'rhn' else 1)
    if optimizer is None:
        return {'weights': weights, 'activations': 2 * max(conv) + rnn // RNN_VALUES}
    copies = OPTIMIZER_SLOTS[optimizer] + 1 + averaged                           # slots, gradients, averages
    return {'weights': weights, 'copies in training': weights * copies,
            'activations': 2 * sum(conv) + rnn * arch.rnn_layers}


# --- layers ------------------------------------------------------------------

def conv_unit(inputs, name, filters, pool, leakiness, training):
    """conv 3x3 -> batch norm -> leaky ReLU -> max-pool SAME. [b, h, w, c] -> [b, ceil(h/ph), ceil(w/pw), filters]

    Computed in the order that gives the same result fastest. In training the max-pool runs before the leaky ReLU,
    which with leakiness >= 0 never changes which value of a window is largest: the ReLU and its gradient see a
    quarter of the values, and the full-size ReLU output is not kept for the backward pass. After training the
    batch norm is folded into the conv's kernel and a bias, which oneDNN runs with the ReLU as one fused op.
    """
    with v1.variable_scope(name):
        kernel = v1.get_variable('kernel', [3, 3, inputs.shape[-1], filters],
                                 initializer=v1.initializers.he_normal())
        if training:
            outputs = batch_norm(tf.nn.conv2d(inputs, kernel, strides=1, padding='SAME'))  # [b, h, w, f]
        else:
            scale, shift = frozen_batch_norm(filters)
            outputs = tf.nn.bias_add(tf.nn.conv2d(inputs, kernel * scale, strides=1, padding='SAME'), shift)
        if training and leakiness >= 0:
            outputs = tf.nn.max_pool2d(outputs, ksize=pool, strides=pool, padding='SAME')   # [b, h/ph, w/pw, f]
            return tf.nn.leaky_relu(outputs, alpha=leakiness)
        outputs = tf.nn.leaky_relu(outputs, alpha=leakiness)
        return tf.nn.max_pool2d(outputs, ksize=pool, strides=pool, padding='SAME')       # [b, h/ph, w/pw, f]


def batch_norm_variables(channels):
    """gamma, beta (trained), moving mean and moving variance (updated in training; MODEL_VARIABLES) [channels] of a
    batch norm."""
    statistics = [v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.MODEL_VARIABLES]
    return (v1.get_variable('gamma', [channels], initializer=v1.ones_initializer()),
            v1.get_variable('beta', [channels], initializer=v1.zeros_initializer()),
            v1.get_variable('moving_mean', [channels], initializer=v1.zeros_initializer(), trainable=False,
                            collections=statistics),
            v1.get_variable('moving_variance', [channels], initializer=v1.ones_initializer(), trainable=False,
                            collections=statistics))


def model_weights():
    """The variables a model consists of: the trained ones and the batch norms' moving statistics."""
    return v1.trainable_variables() + v1.model_variables()


def frozen_batch_norm(channels, epsilon=1e-5):
    """The batch norm after training, on moving statistics, as x * scale + shift: (scale, shift) [channels]."""
    gamma, beta, moving_mean, moving_variance = batch_norm_variables(channels)
    scale = gamma * tf.math.rsqrt(moving_variance + epsilon)
    return scale, beta - moving_mean * scale


def batch_norm(inputs, decay=0.99, epsilon=1e-5):
    """Training's batch norm over [b, h, w, c]: batch statistics, the moving averages updated (UPDATE_OPS)."""
    scale, offset, moving_mean, moving_variance = batch_norm_variables(inputs.shape[-1])
    outputs, mean, variance = v1.nn.fused_batch_norm(
        inputs, scale, offset, moving_mean, moving_variance, epsilon=epsilon, is_training=True,
        exponential_avg_factor=1.0 - decay)
    v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign(moving_mean, mean))
    v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign(moving_variance, variance))
    return outputs


def dense(inputs, units, name):
    """[..., n] -> [..., units]"""
    with v1.variable_scope(name):
        weights = v1.get_variable('weights', [inputs.shape[-1], units], initializer=v1.glorot_uniform_initializer())
        bias = v1.get_variable('bias', [units], initializer=v1.zeros_initializer())
        return tf.tensordot(inputs, weights, axes=1) + bias


# --- RNN cells ---------------------------------------------------------------
# Every cell makes all its variables when it is constructed (none inside the RNN loop), has `state_size` (an int
# or nested tuples of ints) and `output_size`, and maps (inputs [b, input_size], state) to (output, new state).
# sigmoid(f + 1) is a forget gate whose bias starts at 1, as in LSTMCell.

class Cell:
    """What all cells share: `num_units` outputs, by default one [b, num_units] state tensor, and a zero state
    shaped like `state_size`."""

    @property
    def state_size(self):
        return self.num_units

    @property
    def output_size(self):
        return self.num_units

    def zero_state(self, batch_size, dtype):
        return tf.nest.map_structure(lambda size: tf.zeros([batch_size, size], dtype), self.state_size)


def affine_variables(input_size, output_size, bias_initializer=None):
    """`kernel` [input_size, output_size] (Glorot uniform) and `bias` [output_size] (zeros unless given)."""
    kernel = v1.get_variable('kernel', [input_size, output_size], initializer=v1.glorot_uniform_initializer())
    bias = v1.get_variable('bias', [output_size], initializer=bias_initializer or v1.zeros_initializer())
    return kernel, bias


def affine(tensors, kernel, bias):
    """W [tensors...] + b: [b, sum of sizes] -> [b, output_size]"""
    return tf.matmul(tf.concat(tensors, 1), kernel) + bias


class LSTMCell(Cell):
    """Long short-term memory (Hochreiter and Schmidhuber 1997), forget-gate bias 1:

        i, f, o, g = split(W [x_t, h_{t-1}] + b)
        c_t = sigmoid(f + 1) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)

    State (c, h).
    """

    def __init__(self, input_size, num_units, name):
        self.num_units = num_units
        with v1.variable_scope(name):
            self.kernel, self.bias = affine_variables(input_size + num_units, 4 * num_units)

    @property
    def state_size(self):
        return (self.num_units, self.num_units)

    def __call__(self, inputs, state):
        c, h = state
        i, f, o, g = tf.split(affine([inputs, h], self.kernel, self.bias), 4, axis=1)
        c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (c, h)


class GRUCell(Cell):
    """Gated recurrent unit (Cho et al. 2014), the reset gate applied to h_{t-1} before its weights:

        r, z = split(sigmoid(W_g [x_t, h_{t-1}] + b_g))
        n_t = tanh(W_n [x_t, r * h_{t-1}] + b_n)
        h_t = z * h_{t-1} + (1 - z) * n_t

    b_g starts at 1 (the cell starts by mostly keeping h). State h.
    """

    def __init__(self, input_size, num_units, name):
        self.num_units = num_units
        with v1.variable_scope(name):
            with v1.variable_scope('gates'):
                self.gate_kernel, self.gate_bias = affine_variables(input_size + num_units, 2 * num_units,
                                                                    v1.ones_initializer())
            with v1.variable_scope('candidate'):
                self.candidate_kernel, self.candidate_bias = affine_variables(input_size + num_units, num_units)

    def __call__(self, inputs, state):
        r, z = tf.split(tf.sigmoid(affine([inputs, state], self.gate_kernel, self.gate_bias)), 2, axis=1)
        candidate = tf.tanh(affine([inputs, r * state], self.candidate_kernel, self.candidate_bias))
        h = z * state + (1.0 - z) * candidate
        return h, h


class RHNCell(Cell):
    """Recurrent highway network (Zilly et al. 2017), `depth` micro-steps per time step, coupled carry gate:

        s_0 = s_{t-1}
        for l = 1 .. depth:
            a, t = split(W_l [x_t, s_{l-1}] + b_l)     (x_t enters at l = 1 only: W_l [s_{l-1}] + b_l after)
            s_l = tanh(a) * sigmoid(t) + s_{l-1} * (1 - sigmoid(t))
        y_t = s_t = s_depth

    The transform-gate half of every b_l starts at -2, so the cell starts by mostly carrying s (the paper's
    negative transform bias). State s.
    """

    def __init__(self, input_size, num_units, name, depth):
        if depth < 1:
            raise ValueError('an RHN needs at least one micro-step, not rhn_depth=%d' % depth)
        self.num_units = num_units
        transform_bias = v1.constant_initializer([0.0] * num_units + [-2.0] * num_units)
        self.micro_steps = []
        with v1.variable_scope(name):
            for step in range(depth):
                with v1.variable_scope('micro_step_%d' % (step + 1)):
                    step_inputs = input_size + num_units if step == 0 else num_units
                    self.micro_steps.append(affine_variables(step_inputs, 2 * num_units, transform_bias))

    def __call__(self, inputs, state):
        s = state
        for step, (kernel, bias) in enumerate(self.micro_steps):
            a, t = tf.split(affine([inputs, s] if step == 0 else [s], kernel, bias), 2, axis=1)
            transform = tf.sigmoid(t)
            s = tf.tanh(a) * transform + s * (1.0 - transform)
        return s, s


class NestedLSTMCell(Cell):
    """Nested LSTM (Moniz and Krueger 2017), one level of nesting: the outer memory is an inner LSTM's output.

        i, f, o, g = split(W [x_t, h_{t-1}] + b)
        inner input   x~_t     = sigmoid(i) * g              (sigma_c = identity: no tanh on g)
        inner hidden  h~_{t-1} = sigmoid(f + 1) * c_{t-1}
        c~_t, h~_t = LSTMCell(x~_t, (c~_{t-1}, h~_{t-1}))    (tanh on its candidate and its memory)
        c_t = h~_t
        h_t = sigmoid(o) * tanh(c_t)

    Activation choices, following the paper: the outer candidate g enters the inner LSTM without the tanh of an
    LSTM (that LSTM applies its own), and the inner LSTM is this file's LSTMCell, with its tanh activations and
    forget bias 1. State (h, c~, h~); c_{t-1} is the inner h~_{t-1}.
    """

    def __init__(self, input_size, num_units, name):
        self.num_units = num_units
        with v1.variable_scope(name):
            self.kernel, self.bias = affine_variables(input_size + num_units, 4 * num_units)
            self.inner = LSTMCell(num_units, num_units, 'inner')

    @property
    def state_size(self):
        return (self.num_units, self.num_units, self.num_units)

    def __call__(self, inputs, state):
        h, inner_c, c = state
        i, f, o, g = tf.split(affine([inputs, h], self.kernel, self.bias), 4, axis=1)
        c, (inner_c, _) = self.inner(tf.sigmoid(i) * g, (inner_c, tf.sigmoid(f + 1.0) * c))
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (h, inner_c, c)


class HighwayLSTMCell(Cell):
    """One layer of a highway LSTM (Zhang et al. 2016): a peephole LSTM whose memory also takes a gated carry of
    the memory of the layer below at the same time step, c_t^{l-1}:

        i, f, o, g = split(W [x_t, h_{t-1}] + b)
        i_t = sigmoid(i + w_ci * c_{t-1})
        f_t = sigmoid(f + 1 + w_cf * c_{t-1})
        d_t = sigmoid(W_xd x_t + w_cd * c_{t-1} + w_ld * c_t^{l-1} + b_d)       (depth gate)
        c_t = f_t * c_{t-1} + i_t * tanh(g) + d_t * c_t^{l-1}
        h_t = sigmoid(o + w_co * c_t) * tanh(c_t)

    `highway=False` (the first layer, which has no layer below) drops d_t and its variables: a peephole LSTM.
    The w_* are elementwise (peephole) weights, starting at 0. State (c, h), like LSTMCell.
    """

    def __init__(self, input_size, num_units, name, highway):
        self.num_units = num_units
        self.highway = highway
        with v1.variable_scope(name):
            self.kernel, self.bias = affine_variables(input_size + num_units, 4 * num_units)
            self.peepholes = v1.get_variable('peepholes', [3, num_units], initializer=v1.zeros_initializer())
            if highway:
                with v1.variable_scope('depth_gate'):
                    self.depth_kernel, self.depth_bias = affine_variables(input_size, num_units)
                    self.depth_peepholes = v1.get_variable('peepholes', [2, num_units],
                                                           initializer=v1.zeros_initializer())

    @property
    def state_size(self):
        return (self.num_units, self.num_units)

    def __call__(self, inputs, state, lower_memory=None):
        """`lower_memory`: c_t^{l-1} [b, num_units], given exactly when the cell was made with highway=True."""
        if (lower_memory is not None) != self.highway:
            raise ValueError('a highway LSTM layer made with highway=%s needs lower_memory %s'
                             % (self.highway, 'given' if self.highway else 'None'))
        c_previous, h = state
        w_ci, w_cf, w_co = tf.unstack(self.peepholes)
        i, f, o, g = tf.split(affine([inputs, h], self.kernel, self.bias), 4, axis=1)
        c = tf.sigmoid(f + 1.0 + w_cf * c_previous) * c_previous + tf.sigmoid(i + w_ci * c_previous) * tf.tanh(g)
        if self.highway:
            w_cd, w_ld = tf.unstack(self.depth_peepholes)
            depth_gate = tf.sigmoid(affine([inputs], self.depth_kernel, self.depth_bias) + w_cd * c_previous
                                    + w_ld * lower_memory)
            c += depth_gate * lower_memory
        h = tf.sigmoid(o + w_co * c) * tf.tanh(c)
        return h, (c, h)


class StackedCell(Cell):
    """Cells applied one above the other at each time step, with dropout on each layer's output."""

    def __init__(self, cells, keep_prob):
        self.cells = cells
        self.keep_prob = keep_prob

    @property
    def state_size(self):
        return tuple(cell.state_size for cell in self.cells)

    @property
    def output_size(self):
        return self.cells[-1].output_size

    def __call__(self, inputs, state):
        new_state = []
        for cell, cell_state in zip(self.cells, state):
            inputs, cell_state = self.layer(cell, inputs, cell_state, new_state)
            if self.keep_prob < 1.0:
                inputs = tf.nn.dropout(inputs, rate=1.0 - self.keep_prob)
            new_state.append(cell_state)
        return inputs, tuple(new_state)

    def layer(self, cell, inputs, state, states_below):
        """One layer's step; `states_below` are the new states of the layers under it at this time step."""
        return cell(inputs, state)


class HighwayLSTMStack(StackedCell):
    """HighwayLSTMCell layers: each after the first takes the new memory c_t of the layer below (unaffected by
    the dropout on that layer's output h_t)."""

    def layer(self, cell, inputs, state, states_below):
        lower_memory = states_below[-1][0] if states_below else None
        return cell(inputs, state, lower_memory)


# The cell classes by --rnn_cell; hlstm layers run in a HighwayLSTMStack, the others in a StackedCell.
RNN_CELLS = {'lstm': LSTMCell, 'gru': GRUCell, 'hlstm': HighwayLSTMCell, 'rhn': RHNCell, 'nlstm': NestedLSTMCell}


def rnn_stack(kind, input_size, num_units, num_layers, keep_prob, rhn_depth, name):
    """`num_layers` cells of `kind` with `num_units` each, named name/layer_1, name/layer_2, ...; one cell for
    `dynamic_rnn`, [b, t, input_size] -> [b, t, num_units] when run, dropout (keep_prob) on each layer's output."""
    if kind not in RNN_CELLS:
        raise ValueError('rnn_cell must be one of %s, not %r' % (', '.join(RNN_CELLS), kind))
    if num_layers < 1:
        raise ValueError('an RNN needs at least one layer, not rnn_layers=%d' % num_layers)
    cells = []
    for layer in range(num_layers):
        options = {'rhn': {'depth': rhn_depth}, 'hlstm': {'highway': layer > 0}}.get(kind, {})
        cells.append(RNN_CELLS[kind](input_size if layer == 0 else num_units, num_units,
                                     '%s/layer_%d' % (name, layer + 1), **options))
    return (HighwayLSTMStack if kind == 'hlstm' else StackedCell)(cells, keep_prob)


def unroll(cell, inputs):
    """[b, t, n] -> [b, t, output_size]: the cell run over the t steps by a Python loop, as dynamic_rnn runs it
    over sequences of full length, in a graph without control flow."""
    state = cell.zero_state(tf.shape(inputs)[0], inputs.dtype)
    outputs = []
    for step in range(inputs.shape[1]):
        output, state = cell(inputs[:, step], state)                   # [b, output_size]
        outputs.append(output)
    return tf.stack(outputs, axis=1)                                   # [b, t, output_size]


# --- the model ---------------------------------------------------------------

DECODERS = ('beam', 'greedy')  # Recogniser.decode's, --decoder


class Recogniser:
    """The recogniser in one mode: 'train' (batch statistics, dropout), 'val' or 'infer'.

    Build it inside a variable scope with reuse to share weights between a training and an evaluation graph.
    """

    def __init__(self, mode, arch, keep_prob=1.0, unrolled=False):
        """unrolled: the RNN as one copy of its cells per time step, a graph without loops (for LiteRT and ONNX)."""
        if mode not in ('train', 'val', 'infer'):
            raise ValueError('mode must be train, val or infer, not %r' % mode)
        self.arch = arch
        self.training = mode == 'train'
        self.keep_prob = keep_prob if self.training else 1.0
        self.unrolled = unrolled
        self.num_classes = len(arch.charset) + 1
        self.time_steps = time_steps(arch)

    def logits(self, images):
        """uint8 images [b, h, w, c] -> time-major float32 logits [time_steps, b, num_classes]."""
        features = self.conv_tower(images)                             # [b, time_steps, feature_size]
        outputs = self.rnn(features)                                   # [b, time_steps, (2 *) num_hidden]
        logits = dense(outputs, self.num_classes, 'logits')            # [b, time_steps, num_classes]
        return tf.transpose(tf.cast(logits, tf.float32), [1, 0, 2])    # [time_steps, b, num_classes]

    def conv_tower(self, images):
        """uint8 [b, h, w, c] -> features [b, time_steps, feature height * channels], one step per column."""
        outputs = tf.cast(images, tf.float32) / 255.0                  # [b, h, w, c]
        for name, filters, pool_height, pool_width in conv_units(self.arch):
            outputs = conv_unit(outputs, name, filters, [pool_height, pool_width], self.arch.leakiness,
                                self.training)
        steps, height, channels = feature_shape(self.arch)
        outputs = tf.transpose(outputs, [0, 2, 1, 3])                  # [b, time_steps, height, channels]
        return tf.reshape(outputs, [-1, steps, height * channels])     # [b, time_steps, height * channels]

    def rnn(self, features):
        """[b, time_steps, n] -> [b, time_steps, num_hidden], or with arch.bidirectional
        [b, time_steps, 2 * num_hidden]: the forward stack's outputs, then those of a second stack run backwards.

        The stacks' variables are rnn/fw/layer_<k>/... and rnn/bw/layer_<k>/...
        """
        arch = self.arch
        sequence_length = self.sequence_length(tf.shape(features)[0])

        def stack(direction):
            return rnn_stack(arch.rnn_cell, features.shape[-1], arch.num_hidden, arch.rnn_layers, self.keep_prob,
                             arch.rhn_depth, 'rnn/' + direction)

        if self.unrolled:
            forward = unroll(stack('fw'), features)                    # [b, time_steps, num_hidden]
            if not arch.bidirectional:
                return forward
            backward = tf.reverse(unroll(stack('bw'), tf.reverse(features, [1])), [1])
            return tf.concat([forward, backward], axis=2)              # [b, time_steps, 2 * num_hidden]
        if not arch.bidirectional:
            outputs, _ = v1.nn.dynamic_rnn(stack('fw'), features, sequence_length=sequence_length,
                                           dtype=features.dtype, scope='rnn/fw')
            return outputs                                             # [b, time_steps, num_hidden]
        (forward, backward), _ = v1.nn.bidirectional_dynamic_rnn(
            stack('fw'), stack('bw'), features, sequence_length=sequence_length, dtype=features.dtype, scope='rnn')
        return tf.concat([forward, backward], axis=2)                  # [b, time_steps, 2 * num_hidden]

    def sequence_length(self, batch_size):
        """[batch_size] of time_steps: every image of an architecture has the same number of steps."""
        return tf.fill([batch_size], self.time_steps)

    def losses(self, logits, label_ids):
        """CTC loss of each image [b]; label_ids [b, max_len] int32, padded with -1. No valid path gives inf.

        An empty label (an image without text) has one path, the blank at every step: its loss is computed here,
        since TensorFlow's CTC op refuses empty labels (it gets a stand-in label whose loss is not used).
        """
        empty = tf.equal(tf.reduce_max(label_ids, axis=1), -1)                    # [b]
        first = tf.equal(tf.range(tf.shape(label_ids)[1]), 0)                      # [max_len]
        stand_in = tf.where(empty[:, None] & first[None, :], tf.zeros_like(label_ids), label_ids)
        ctc = v1.nn.ctc_loss(dense_to_sparse(stand_in), logits, self.sequence_length(tf.shape(logits)[1]),
                             time_major=True)                                  # [b]
        blank_only = -tf.reduce_sum(tf.nn.log_softmax(logits)[:, :, -1], axis=0)  # [b]
        return tf.where(empty, blank_only, ctc)

    def decode(self, logits, decoder='beam', beam_width=10):
        """Class ids of each image's reading [b, max_decoded_len], padded with -1, and its confidence [b] in
        [0, 1]: the model's probability of that reading. Beam search gives it for the reading's alignments that
        its beam kept; greedy decoding for the single best alignment (a lower bound of the reading's)."""
        sequence_length = self.sequence_length(tf.shape(logits)[1])
        if decoder == 'beam':
            decoded, log_probabilities = tf.nn.ctc_beam_search_decoder(logits, sequence_length,
                                                                       beam_width=beam_width, top_paths=1)
            confidence = tf.exp(log_probabilities[:, 0])                                        # [b]
        elif decoder == 'greedy':
            decoded, _ = tf.nn.ctc_greedy_decoder(logits, sequence_length, merge_repeated=True)
            confidence = tf.exp(tf.reduce_sum(tf.reduce_max(tf.nn.log_softmax(logits), axis=2), axis=0))  # [b]
        else:
            raise ValueError('decoder must be one of %s, not %r' % (DECODERS, decoder))
        return tf.sparse.to_dense(decoded[0], default_value=-1), tf.minimum(confidence, 1.0)


def greedy_reading(logits):
    """Time-major logits [t, b, classes] -> the greedy CTC reading [b, t] int32 (the best class per step, repeats
    merged, blanks dropped, padded with -1) and its confidence [b], as decode(decoder='greedy') gives them, from
    element-wise ops, arg-max, cumulative sum and sums only: ops that LiteRT and ONNX run."""
    steps, blank = logits.shape[0], logits.shape[-1] - 1
    best = tf.transpose(tf.argmax(logits, axis=2, output_type=tf.int32))                # [b, t]
    previous = tf.pad(best[:, :-1], [[0, 0], [1, 0]], constant_values=blank)           # [b, t]
    kept = tf.logical_and(tf.not_equal(best, previous), tf.not_equal(best, blank))      # [b, t]
    slot = tf.cumsum(tf.cast(kept, tf.int32), axis=1) - 1                               # [b, t]: its place
    placed = tf.logical_and(kept[:, :, None], tf.equal(slot[:, :, None], tf.range(steps)))    # [b, t, t]
    labels = tf.reduce_sum(tf.cast(placed, tf.int32) * (best[:, :, None] + 1), axis=1) - 1     # [b, t]
    confidence = tf.exp(tf.reduce_sum(tf.reduce_max(tf.nn.log_softmax(logits), axis=2), axis=0))  # [b]
    return labels, tf.minimum(confidence, 1.0)


def dense_to_sparse(label_ids):
    """[b, max_len] int32 padded with -1 -> the SparseTensor of labels that CTC takes."""
    indices = tf.where(label_ids >= 0)
    return tf.SparseTensor(indices, tf.gather_nd(label_ids, indices), tf.shape(label_ids, out_type=tf.int64))


LR_SCHEDULES = ('exponential', 'cosine', 'piecewise')  # learning_rate's schedules, --lr_schedule


def learning_rate(global_step, schedule, initial, decay_steps, decay_rate, boundaries=(), warmup_steps=0):
    """The learning rate at global_step, optionally raised linearly from 0 over the first warmup_steps (decay_steps
    and warmup_steps may be tensors: a schedule fitted to a time budget).

    exponential: initial * decay_rate ** floor(step / decay_steps) (staircase, the original's);
    cosine: initial * (1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2;
    piecewise: initial * decay_rate ** (number of boundaries at or below step).
    """
    step = tf.cast(global_step, tf.float32)
    if schedule == 'exponential':
        rate = initial * decay_rate ** tf.floor(step / decay_steps)
    elif schedule == 'cosine':
        decay_steps = tf.cast(decay_steps, tf.float32)
        rate = initial * 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(step, decay_steps) / decay_steps))
    elif schedule == 'piecewise':
        passed = tf.reduce_sum(tf.cast(step >= tf.constant(list(boundaries), tf.float32), tf.float32))
        rate = initial * decay_rate ** passed
    else:
        raise ValueError('unknown learning-rate schedule %r' % schedule)
    return rate * tf.minimum(1.0, (step + 1.0) / tf.maximum(tf.cast(warmup_steps, tf.float32), 1.0))


OPTIMIZERS = ('adam', 'momentum')  # --optimizer


def optimizer(name, rate, beta1, beta2, momentum, loss_scaling=False):
    """Adam or momentum SGD; with loss_scaling (fp16), wrapped in dynamic loss scaling against underflow."""
    if name == 'adam':
        opt = v1.train.AdamOptimizer(rate, beta1=beta1, beta2=beta2)
    elif name == 'momentum':
        opt = v1.train.MomentumOptimizer(rate, momentum)
    else:
        raise ValueError('unknown optimizer %r' % name)
    return v1.mixed_precision.MixedPrecisionLossScaleOptimizer(opt, 'dynamic') if loss_scaling else opt


# --- towers ------------------------------------------------------------------
# Data parallelism, the TensorFlow 1.x tower recipe: the batch is cut into one contiguous shard per device, every
# device runs the same model on its shard (variables shared through variable-scope reuse and kept on one device),
# and the towers' gradients are added up on the variables' device and applied once.

VARIABLE_OPS = ('VarHandleOp', 'VariableV2')


def tower_placement(tower_device, variable_device):
    """A device function for v1.device: variables on variable_device (a device name, or a device function such as
    replica_device_setter's), every other op on tower_device."""
    def place(op):
        if op.type not in VARIABLE_OPS:
            return tower_device
        return variable_device(op) if callable(variable_device) else variable_device
    return place


def split_batch(batch, num_shards):
    """A batch {name: [b, ...]} -> num_shards batches of contiguous shards, in batch order.

    Shard sizes are b // num_shards, the first b % num_shards shards one more (a last partial batch need not
    divide evenly); a batch of fewer than num_shards images leaves shards empty, which the model cannot take.
    """
    if num_shards == 1:
        return [batch]
    size = tf.shape(batch['images'])[0]
    sizes = size // num_shards + tf.cast(tf.range(num_shards) < size % num_shards, tf.int32)   # [num_shards]
    pieces = {name: tf.split(tensor, sizes, num=num_shards) for name, tensor in batch.items()}
    return [{name: pieces[name][index] for name in batch} for index in range(num_shards)]


def tower_gradients(opt, losses, batch_size):
    """(gradient, variable) pairs of one tower's share of the batch's mean loss: its images' losses [n] summed
    and divided by the image count of the whole batch, so that the towers' gradients add up to the gradient of
    the batch mean (with equal shards, the average of the towers' mean-loss gradients). The gradient ops take the
    tower's device from the enclosing device function, not from the forward ops: in a cluster, colocating them
    would tie worker ops to the ps task that holds a variable."""
    share = tf.reduce_sum(losses) / tf.cast(batch_size, losses.dtype)
    return opt.compute_gradients(share, colocate_gradients_with_ops=False)


def add_tower_gradients(tower_gradients):
    """A list per tower of (gradient, variable) pairs, in the same variable order -> one list of summed pairs."""
    summed = []
    for pairs in zip(*tower_gradients):
        variable = pairs[0][1]
        if any(other is not variable for _, other in pairs):
            raise ValueError('towers list their gradients in different variable orders at %s' % variable.name)
        gradients = [gradient for gradient, _ in pairs if gradient is not None]
        summed.append((tf.add_n(gradients) if gradients else None, variable))
    return summed


def apply_gradients(gradients, opt, global_step, update_ops):
    """Applies (gradient, variable) pairs once, advancing global_step by one, after update_ops (the batch-norm
    moving statistics) have run."""
    with tf.control_dependencies(update_ops):
        return opt.apply_gradients(gradients, global_step=global_step)


# --- graphs ------------------------------------------------------------------
# What main.py builds, from plain arguments: a reading graph (val, infer, export) and a training graph of one or
# more towers. Both keep their variables in the scope 'ocr', so that one can restore the other's checkpoint.

Hyperparameters = collections.namedtuple('Hyperparameters', [
    'optimizer', 'initial_learning_rate', 'lr_schedule', 'decay_steps', 'decay_rate', 'lr_boundaries',
    'warmup_steps', 'beta1', 'beta2', 'momentum', 'keep_prob', 'clip_norm', 'loss_scaling', 'moving_average_decay'])


def reading_graph(arch, images, decoder='beam', beam_width=10, mode='infer'):
    """uint8 images [b, h, w, c] -> class ids of each image's reading [b, max_len], padded with -1, and the
    reading's confidence [b] (Recogniser.decode)."""
    with v1.variable_scope('ocr', reuse=v1.AUTO_REUSE):
        model = Recogniser(mode, arch)
        return model.decode(model.logits(images), decoder, beam_width)


def portable_reading_graph(arch, images):
    """reading_graph with the greedy decoder, for LiteRT and ONNX: uint8 images [b, h, w, c] -> class ids of
    each reading [b, time_steps], padded with -1, and its confidence [b], from an unrolled RNN and
    greedy_reading."""
    with v1.variable_scope('ocr', reuse=v1.AUTO_REUSE):
        return greedy_reading(Recogniser('infer', arch, unrolled=True).logits(images))


def reading_text(charset, ids):
    """Class ids [b, n] padded with -1 -> the readings as strings [b]."""
    characters = tf.constant(list(charset) + [''])                                          # the last: padding
    ids = tf.where(ids < 0, tf.cast(len(charset), ids.dtype), ids)
    return tf.strings.reduce_join(tf.gather(characters, ids), axis=1)


def batches_for_towers(dataset, num_towers):
    """Training batches every tower gets images of: a batch of fewer images than towers, which only the very last
    batch of a finite dataset can be, is dropped (at most num_towers - 1 images)."""
    return dataset.filter(lambda batch: tf.shape(batch['images'])[0] >= num_towers)


def towers(arch, batch, opt, keep_prob, devices, variable_device):
    """One model per device on its shard of the batch, sharing the variables of the current scope (on
    variable_device): each tower's per-image losses and gradients, and the batch-norm updates of the first tower."""
    tower_losses, gradients = [], []
    for index, (device, shard) in enumerate(zip(devices, split_batch(batch, len(devices)))):
        updates_before = len(v1.get_collection(v1.GraphKeys.UPDATE_OPS))
        with v1.device(tower_placement(device, variable_device)), \
                v1.variable_scope(v1.get_variable_scope(), reuse=index > 0, auxiliary_name_scope=False), \
                v1.name_scope('tower_%d' % index):
            model = Recogniser('train', arch, keep_prob)
            tower_losses.append(model.losses(model.logits(shard['images']), shard['label_ids']))     # [shard]
            gradients.append(tower_gradients(opt, tower_losses[-1], tf.shape(batch['images'])[0]))
        if index == 0:
            first_tower_updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)[updates_before:]
    return tower_losses, gradients, first_tower_updates


def clip_gradients(gradients, clip_norm):
    """(gradient, variable) pairs scaled down together so that their global norm is at most clip_norm (0: as they
    are), and the global norm before clipping."""
    norm = tf.linalg.global_norm([gradient for gradient, _ in gradients])
    if not clip_norm:
        return gradients, norm
    clipped, _ = tf.clip_by_global_norm([gradient for gradient, _ in gradients], clip_norm, use_norm=norm)
    return list(zip(clipped, [variable for _, variable in gradients])), norm


class MovingAverages:
    """Exponential moving averages of the model_weights (the batch norms' statistics too, so that they follow the
    averaged weights), moved after every training step by v1.train.ExponentialMovingAverage: the model that
    validation reads and checkpoints hold, steadier than the weights of the last step while the learning rate is
    high. The decay warms up with the global step, min(decay, (1 + step) / (10 + step)), so that early averages
    follow the weights. Decay 0: no averages, the weights."""

    def __init__(self, decay, global_step):
        self.ema = v1.train.ExponentialMovingAverage(decay, num_updates=global_step) if decay else None

    def average(self, variable):
        """The variable that holds variable's average; variable itself where there is none."""
        average = self.ema.average(variable) if self.ema else None
        return variable if average is None else average

    def model_variables(self):
        """The global variables but the averages."""
        averages = {self.average(v).op.name for v in v1.moving_average_variables()}
        return [v for v in v1.global_variables() if v.op.name not in averages]

    def saved(self):
        """{name: variable} that a checkpoint holds: model_variables, the averages under their variables' names."""
        return {v.op.name: self.average(v) for v in self.model_variables()}

    def after(self, step_op):
        """An op that runs step_op, then moves the averages (step_op itself without averages)."""
        if not self.ema:
            return step_op
        with tf.control_dependencies([step_op]):
            return self.ema.apply(model_weights())

    def restart(self):
        """The op that sets every average to its variable: after a restore, the averages start from the weights."""
        return tf.group([self.average(v).assign(v) for v in v1.moving_average_variables()])

    @contextlib.contextmanager
    def reading(self):
        """Graphs built inside read the averages of the variables they share with the training graph."""
        with v1.variable_scope(v1.get_variable_scope(), auxiliary_name_scope=False,
                               custom_getter=lambda getter, *args, **kwargs: self.average(getter(*args, **kwargs))):
            yield


def training_graph(arch, batch, hparams, global_step, devices, variable_device=None, replicas=0):
    """The training step on a batch {images, label_ids, ...}, one tower per device: per-image losses [b] in batch
    order, their mean, the learning rate, the gradients' global norm and the step op's new global step; the
    optimiser, whose replication ops the tasks of a cluster run; and the MovingAverages of the weights. The
    variables live on variable_device (default: the CPU for several towers, else the one device); several towers
    add up their gradients there, and the batch-norm moving statistics follow the first tower's shard. replicas N
    >= 1: the workers of a cluster train synchronously, every step applying the mean of N workers' gradients
    (clipped on each worker), the chief moving the averages."""
    if variable_device is None:
        variable_device = '/cpu:0' if len(devices) > 1 else devices[0]
    with v1.device(variable_device), v1.variable_scope('ocr'):
        rate = learning_rate(global_step, hparams.lr_schedule, hparams.initial_learning_rate, hparams.decay_steps,
                             hparams.decay_rate, hparams.lr_boundaries, hparams.warmup_steps)
        opt = optimizer(hparams.optimizer, rate, hparams.beta1, hparams.beta2, hparams.momentum,
                        hparams.loss_scaling)
        tower_losses, gradients, updates = towers(arch, batch, opt, hparams.keep_prob, devices, variable_device)
        gradients, norm = clip_gradients(add_tower_gradients(gradients), hparams.clip_norm)
        averages = MovingAverages(hparams.moving_average_decay, global_step)
        if replicas:  # its chief moves the averages once a step
            opt = v1.train.SyncReplicasOptimizer(opt, replicas_to_aggregate=replicas, total_num_replicas=replicas,
                                                 variable_averages=averages.ema,
                                                 variables_to_average=model_weights())
        step_op = apply_gradients(gradients, opt, global_step, updates)
        if not replicas:
            step_op = averages.after(step_op)
        losses = tf.concat(tower_losses, 0)                                                            # [b]
    with tf.control_dependencies([step_op]):
        next_step = global_step.read_value()
    return {'losses': losses, 'loss': tf.reduce_mean(losses), 'rate': rate, 'gradient_norm': norm,
            'step': next_step}, opt, averages


# --- input: image files and served image bytes -------------------------------

def image_dataset(images, batch_size, shuffle=False, seed=0, repeat=1, keep_unreadable=False, augment=False):
    """A streaming pipeline of batches {images uint8 [b, h, w, c], labels [b], label_ids [b, n], paths [b], ok [b]}
    from a utils.LabelledImages (the files it reads, by number).

    The graph holds image numbers (shuffled as the names themselves would be), never the names, which TensorFlow
    would copy at every graph optimisation and checkpoint; a batch of numbers is read in one Python call, batches
    in parallel. Unreadable images are dropped unless keep_unreadable, when they come as zeros with ok False. The
    last batch is kept even when partial. With augment, every batch also carries its images through augment_images
    (`augmented`), which ramped_augmentation mixes in (training only).
    """
    def read(indices):
        outputs = tf.numpy_function(images.read, [indices], [tf.uint8, tf.bool, tf.string, tf.string, tf.int32],
                                    stateful=False)
        shapes = [[None, *images.shape], [None], [None], [None], [None, images.label_ids.shape[1]]]
        for tensor, tensor_shape in zip(outputs, shapes):
            tensor.set_shape(tensor_shape)
        return dict(zip(['images', 'ok', 'paths', 'labels', 'label_ids'], outputs))

    dataset = tf.data.Dataset.range(len(images.paths))
    if shuffle:
        dataset = dataset.shuffle(len(images.paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat(repeat).batch(batch_size)
    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    if not keep_unreadable:
        dataset = dataset.filter(lambda image: image['ok'])
    dataset = dataset.batch(batch_size)
    if augment:
        dataset = dataset.map(lambda batch: dict(batch, augmented=augment_images(batch['images'])),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --- augmentation ------------------------------------------------------------
# Each change is drawn per image and left out for a random share of them. Training takes the changed images in a
# share that rises from none to AUGMENTED_SHARE over the first half of the schedule: the model first learns the
# images as they are, quickly, then is kept from learning them by heart. Every change keeps the text readable: the
# image only shrinks or moves a little (text that fills it is not cut off at an edge), strokes thin or thicken by a
# pixel, contrast falls to half at most (faint text does not vanish).

AUGMENTED_SHARE = 0.6

def per_image(batch_size, low, high, share, neutral=0.0):
    """[batch_size] values uniform in [low, high); a random (1 - share) of them `neutral` (no change)."""
    values = tf.random.uniform([batch_size], low, high)
    return tf.where(tf.random.uniform([batch_size]) < share, values, neutral)


def warp_transforms(batch_size, height, width):
    """[batch_size, 8] projective maps (output pixel -> input pixel, ImageProjectiveTransformV3's form) of a random
    rotation, shear, scale, shift and perspective about the image centre."""
    angle = per_image(batch_size, -0.1, 0.1, 0.7)                        # radians, about 6 degrees either way
    shear = per_image(batch_size, -0.3, 0.3, 0.5)
    scale_x = per_image(batch_size, 0.85, 1.0, 0.6, neutral=1.0)         # never larger
    scale_y = per_image(batch_size, 0.85, 1.0, 0.6, neutral=1.0)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    shift_x = centre_x + per_image(batch_size, -0.02, 0.02, 0.5) * width
    shift_y = centre_y + per_image(batch_size, -0.04, 0.04, 0.5) * height
    tilt_x = per_image(batch_size, -0.3, 0.3, 0.3) / width               # perspective: up to 30% across the image
    tilt_y = per_image(batch_size, -0.3, 0.3, 0.3) / height
    cos, sin = tf.cos(angle), tf.sin(angle)
    # centred coordinates (u, v) -> input: (m00 u + m01 v, m10 u + m11 v) / (1 + tilt_x u + tilt_y v) + shift
    m00, m01 = cos / scale_x, (cos * shear - sin) / scale_y
    m10, m11 = sin / scale_x, (sin * shear + cos) / scale_y
    norm = 1 - tilt_x * centre_x - tilt_y * centre_y                       # the same map in uncentred pixels
    return tf.stack([(m00 + shift_x * tilt_x) / norm, (m01 + shift_x * tilt_y) / norm,
                     (shift_x * norm - m00 * centre_x - m01 * centre_y) / norm,
                     (m10 + shift_y * tilt_x) / norm, (m11 + shift_y * tilt_y) / norm,
                     (shift_y * norm - m10 * centre_x - m11 * centre_y) / norm,
                     tilt_x / norm, tilt_y / norm], axis=1)                # [b, 8]


def choose(condition, changed, unchanged):
    """Per image [b] of a batch of images [b, h, w, c]: changed where condition, else unchanged."""
    return tf.where(condition[:, None, None, None], changed, unchanged)


def augment_images(images):
    """uint8 images [b, h, w, c] -> uint8 [b, h, w, c], each randomly changed as text images of other sources
    differ: thicker or thinner strokes, a projective warp (rotation, shear, scale, shift, perspective; edges
    extended), blur, contrast, brightness and colour, pixel noise."""
    batch_size, height, width, channels = tf.shape(images)[0], images.shape[1], images.shape[2], images.shape[3]
    pixels = tf.cast(images, tf.float32) / 255                                          # [b, h, w, c]
    stroke = tf.random.uniform([batch_size])
    darker = -tf.nn.max_pool2d(-pixels, 2, 1, 'SAME')                                   # dark strokes thicker
    lighter = tf.nn.max_pool2d(pixels, 2, 1, 'SAME')                                    # light strokes thicker
    pixels = choose(stroke < 0.1, darker, choose(stroke > 0.9, lighter, pixels))
    pixels = tf.raw_ops.ImageProjectiveTransformV3(
        images=pixels, transforms=warp_transforms(batch_size, height, width), output_shape=[height, width],
        fill_value=0.0, interpolation='BILINEAR', fill_mode='NEAREST')
    kernel = (tf.constant([1, 2, 1], tf.float32)[:, None] * [1, 2, 1] / 16)[..., None, None]          # [3, 3, 1, 1]
    blurred = tf.nn.depthwise_conv2d(pixels, tf.tile(kernel, [1, 1, channels, 1]), [1, 1, 1, 1], 'SAME')
    blur = per_image(batch_size, 0.3, 1.0, 0.3)[:, None, None, None]
    pixels += blur * (blurred - pixels)
    brightness = per_image(batch_size, -0.1, 0.1, 0.5)[:, None, None, None]
    gain = tf.where(tf.random.uniform([batch_size, 1, 1, 1]) < 0.5,
                    tf.random.uniform([batch_size, 1, 1, channels], 0.8, 1.2), 1.0)       # colour (grey: level)
    pixels = tf.clip_by_value((pixels + brightness) * gain, 0, 1)
    mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
    contrast = per_image(batch_size, 0.5, 1.2, 0.5, neutral=1.0)[:, None, None, None]
    pixels = mean + (pixels - mean) * contrast                             # after the clip: fading keeps the text
    noise = per_image(batch_size, 0.01, 0.04, 0.3)[:, None, None, None]
    pixels += noise * tf.random.normal(tf.shape(pixels))
    return tf.cast(tf.round(tf.clip_by_value(pixels, 0, 1) * 255), tf.uint8)


def ramped_augmentation(batch, global_step, schedule_end):
    """The images of a training batch of image_dataset(augment=True), a random share of them replaced by their
    augmented copies: AUGMENTED_SHARE from half of schedule_end on, rising linearly from 0 until then."""
    share = AUGMENTED_SHARE * tf.minimum(1.0, tf.cast(global_step, tf.float32) / (schedule_end / 2))
    return choose(tf.random.uniform([tf.shape(batch['images'])[0]]) < share, batch['augmented'], batch['images'])


def decode_image_bytes(encoded, height, width, channels, max_pixels):
    """One encoded image (string scalar: PNG, JPEG, BMP, GIF's first frame) -> uint8 [height, width, channels],
    utils.read_image in TensorFlow ops for a served model: more than max_pixels is an error before decoding;
    transparency over a paper that contrasts with the opaque pixels, grey by the same weights as OpenCV, area
    resizing to shrink and bilinear to enlarge."""
    def with_alpha(rgb):                                                                      # [h, w, 3] -> [h, w, 4]
        return tf.concat([rgb, tf.fill(tf.concat([tf.shape(rgb)[:2], [1]], 0), tf.constant(255, tf.uint8))], 2)

    gif = tf.equal(tf.strings.substr(encoded, 0, 3), 'GIF')
    with tf.control_dependencies([tf.debugging.assert_less_equal(
            header_pixels(encoded, gif), tf.constant(max_pixels, tf.int64), message='image too large')]):
        rgba = tf.case([(tf.io.is_jpeg(encoded), lambda: with_alpha(tf.io.decode_jpeg(encoded, channels=3))),
                        (gif, lambda: with_alpha(tf.io.decode_gif(encoded)[0]))],
                       default=lambda: tf.io.decode_image(encoded, channels=4, expand_animations=False))  # [h, w, 4]
    colour, alpha = tf.cast(rgba[..., :3], tf.float32), tf.cast(rgba[..., 3:], tf.float32) / 255
    opaque = alpha[..., 0] > 0.5
    ink = tf.reduce_mean(tf.boolean_mask(colour, opaque))
    paper = tf.where(tf.logical_or(tf.logical_not(tf.reduce_any(opaque)), ink < 128), 255.0, 0.0)
    image = colour * alpha + paper * (1 - alpha)                                            # [h, w, 3] RGB
    if channels == 1:
        image = tf.reduce_sum(image * [0.299, 0.587, 0.114], axis=2, keepdims=True)         # [h, w, 1]
    else:
        image = image[..., ::-1]                                                            # BGR, as OpenCV
    image = tf.round(image)
    shrink = tf.logical_or(tf.shape(image)[0] > height, tf.shape(image)[1] > width)
    image = tf.cond(shrink, lambda: tf.image.resize(image, [height, width], method='area'),
                    lambda: tf.image.resize(image, [height, width], method='bilinear'))
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def header_pixels(encoded, gif):
    """The pixel count in an encoded image's header (JPEG, GIF, PNG or BMP), read without decoding it."""
    def number(offset, size, big_endian):
        data = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, offset, size), tf.uint8), tf.int64)
        weights = [256 ** i for i in (reversed(range(size)) if big_endian else range(size))]
        return tf.reduce_sum(data * tf.constant(weights, tf.int64))

    def jpeg():
        return tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64))

    png = tf.equal(tf.strings.substr(encoded, 0, 4), b'\x89PNG')
    bmp_height = number(22, 4, False)
    return tf.case([(tf.io.is_jpeg(encoded), jpeg),
                    (gif, lambda: number(6, 2, False) * number(8, 2, False)),
                    (png, lambda: number(16, 4, True) * number(20, 4, True))],
                   default=lambda: number(18, 4, False) * tf.minimum(bmp_height, 2 ** 32 - bmp_height))


def decode_image_batch(image_bytes, height, width, channels, max_pixels):
    """Encoded images [n] -> (images [k, h, w, c] of the k that decode, then one blank image; where [n], each
    image's row in images, -1 for one that does not decode): a bad image among good ones does not fail the
    batch."""
    count = tf.size(image_bytes, out_type=tf.int64)
    decoded = tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes)).map(
        lambda index, encoded: (index, decode_image_bytes(encoded, height, width, channels, max_pixels))
    ).ignore_errors()
    blank = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.zeros([height, width, channels], tf.uint8)))
    indices, images = decoded.concatenate(blank).batch(count + 1).get_single_element()      # [k + 1], [k + 1, ...]
    rows = tf.range(tf.size(indices, out_type=tf.int64) - 1)
    where = tf.scatter_nd(indices[:-1, None], rows + 1, [count]) - 1                          # [n]
    return images, where


# --- replication -------------------------------------------------------------
# Between-graph replication on TensorFlow's gRPC runtime: every worker task builds the training graph under
# replica_device_setter, which puts the variables on the parameter-server (ps) tasks and every other op on the
# worker; a SyncReplicasOptimizer on the ps aggregates the workers' gradients into each step. The chief worker
# initialises the model and tells the other tasks, through the ops below, when it is ready and when training ends.

def replica_devices(cluster, task_device):
    """A device function: variables round-robin on the ps tasks of cluster ({job: [address]}), every other op on
    task_device ('/job:worker/task:1')."""
    return v1.train.replica_device_setter(worker_device=task_device, cluster=cluster)


def cluster_variables():
    """Two variables on ps task 0 outside every collection, so neither initialised with the model nor saved: the
    model's architecture as JSON, which the chief sets once it has initialised or restored the model (the other
    workers wait for it), and whether the chief has ended the training."""
    with tf.device('/job:ps/task:0'):
        architecture = v1.get_variable('cluster_architecture', initializer=tf.constant(''), trainable=False,
                                       collections=[])
        finished = v1.get_variable('cluster_finished', initializer=tf.constant(False), trainable=False,
                                   collections=[])
    return architecture, finished


def ps_exit_queue(ps_index):
    """The queue, on ps task ps_index, that the chief puts one item in when the ps task may exit."""
    with tf.device('/job:ps/task:%d' % ps_index):
        return tf.queue.FIFOQueue(1, tf.int32, shapes=[[]], shared_name='ps_exit_%d' % ps_index,
                                  name='ps_exit_%d' % ps_index)


def workers_done_queue(replicas):
    """The queue, on ps task 0, that every worker but the chief puts its replica index in when it has finished."""
    with tf.device('/job:ps/task:0'):
        return tf.queue.FIFOQueue(replicas, tf.int32, shapes=[[]], shared_name='workers_done', name='workers_done')


# --- a cluster's runtime: servers and replication -------------------------------
# A task (utils.ClusterTask) joins its cluster through its server; a worker builds the training graph under
# replica_devices and keeps in step with the others through Replication. A wait that TensorFlow leaves without a
# deadline is bounded by utils.watchdog, which calls `silent(doing, seconds)`: it ends the process.

def start_server(task, config):
    """This task's gRPC server; a port already in use here is a UserError (gRPC would share it silently)."""
    check_port_free(task)
    try:
        return tf.distribute.Server(tf.train.ClusterSpec(task.cluster), job_name=task.job, task_index=task.index,
                                    config=config)
    except tf.errors.OpError as error:
        raise UserError('%s: cannot start its server: %s' % (task, error.message))


def serve_variables(task, config):
    """A ps task: serves its share of the variables until the chief ends the training, then returns."""
    server = start_server(task, config)
    log.info('%s: serving variables until the chief ends the training', task)
    with tf.Graph().as_default():
        exit_signal = ps_exit_queue(task.index).dequeue()
        with v1.Session(server.target, config=config) as session:
            session.run(exit_signal)
    log.info('%s: the chief has ended the training', task)


class Replication:
    """A worker task's membership of its cluster: its server, and the ops by which the tasks keep in step, built in
    its training graph. The chief publishes the architecture and, with sync, hands out the SyncReplicasOptimizer's
    step tokens; at the end it tells the workers, waits for them, and lets the ps tasks exit."""

    def __init__(self, task, config, timeout, sync, silent):
        self.task, self.config, self.timeout, self.sync, self.silent = task, config, timeout, sync, silent
        self.server = start_server(task, config)
        wait_for_ps_tasks(task, timeout)
        log.info('%s: %d ps task(s), %d workers, %s training', task, len(task.cluster['ps']), task.replicas,
                 'synchronous' if sync else 'asynchronous')

    def placement(self):
        """Variables on the ps tasks, every other op on this task."""
        return v1.device(self.devices())

    def devices(self):
        return replica_devices(self.task.cluster, self.task.device)

    def architecture_from_chief(self):
        """The architecture (JSON fields) the chief trains, once it has initialised the model (waiting timeout)."""
        with tf.Graph().as_default(), watchdog(2 * self.timeout, self.silent, 'waiting for the chief'):
            architecture, _ = cluster_variables()
            uninitialised = v1.report_uninitialized_variables([architecture])
            with v1.Session(self.server.target, config=self.config) as session:
                deadline = time.time() + self.timeout
                while session.run(uninitialised).size:
                    if time.time() > deadline:
                        raise UserError('%s: the chief has not initialised the model after --cluster_timeout=%d s: '
                                        'is it started?' % (self.task, self.timeout))
                    time.sleep(0.5)
                return json.loads(session.run(architecture))

    def build(self, opt):
        """The replication ops, once the training graph (and its optimiser opt) is built."""
        self.architecture, self.finished = cluster_variables()
        ready = v1.report_uninitialized_variables(v1.global_variables() + [self.architecture, self.finished])
        local_init = ready_for_local_init = None
        if self.sync:
            local_init = opt.chief_init_op if self.task.is_chief else opt.local_step_init_op
            ready_for_local_init = opt.ready_for_local_init_op  # the model's variables initialised
            self.first_tokens = opt.get_init_tokens_op()
            self.wake_workers = opt.get_init_tokens_op(self.task.replicas)
            self.token_runner = opt.get_chief_queue_runner()
        self.manager = v1.train.SessionManager(local_init_op=local_init, ready_op=ready,
                                               ready_for_local_init_op=ready_for_local_init, recovery_wait_secs=1)
        self.published = tf.constant('')
        self.publish = [self.finished.initializer, self.architecture.assign(self.published)]
        self.finish = self.finished.assign(True)
        done = workers_done_queue(self.task.replicas)
        self.report_done, self.take_done = done.enqueue(self.task.replica_index), done.dequeue()
        self.ps_exits = [ps_exit_queue(index).enqueue(0) for index in range(len(self.task.cluster['ps']))]
        self.coordinator = v1.train.Coordinator()

    @contextlib.contextmanager
    def chief_session(self, start, architecture_json):
        """The chief's session: start(session) initialises or restores the model, then the workers get its
        architecture and, with sync, the first step tokens."""
        def start_and_publish(session):
            start(session)
            session.run(self.publish, {self.published: architecture_json})

        with watchdog(2 * self.timeout, self.silent, 'starting its session'):
            session = self.manager.prepare_session(self.server.target, init_fn=start_and_publish, config=self.config)
        if self.sync:
            session.run(self.first_tokens)
            self.token_runner.create_threads(session, coord=self.coordinator, daemon=True, start=True)
        yield session  # after an error, no close: a task that is gone would hold it up (the process ends)
        self.coordinator.request_stop()
        session.close()

    @contextlib.contextmanager
    def worker_session(self):
        """A worker's session, once the chief has initialised the model (waiting timeout); at its end the worker
        tells the chief it has stopped."""
        try:
            with watchdog(2 * self.timeout, self.silent, 'waiting for its session'):
                session = self.manager.wait_for_session(self.server.target, config=self.config,
                                                        max_wait_secs=self.timeout)
        except tf.errors.DeadlineExceededError:
            raise UserError('%s: the chief has not initialised the model after --cluster_timeout=%d s' % (
                self.task, self.timeout))
        yield session
        session.run(self.report_done)
        session.close()  # only now: after an error, a task that is gone would hold it up (the process ends)

    def chief_ended(self, session):
        """Whether the chief has ended the training (always False on the chief, which ends it)."""
        return not self.task.is_chief and session.run(self.finished)

    def end(self, session):
        """The chief's last act: tells the workers training has ended, waits (timeout) for them to say they have
        stopped, then lets the ps tasks exit."""
        session.run(self.finish)
        if self.sync:
            session.run(self.wake_workers)  # a worker waiting for a step token gets one, and sees the end
        deadline = time.time() + self.timeout
        for _ in range(self.task.replicas - 1):
            try:
                timeout = max(1, int(1000 * (deadline - time.time())))
                session.run(self.take_done, options=v1.RunOptions(timeout_in_ms=timeout))
            except tf.errors.DeadlineExceededError:
                log.warning('warning: not every worker reported its end within --cluster_timeout=%d s', self.timeout)
                break
        session.run(self.ps_exits)
        log.info('%s: training ended; the ps tasks may exit', self.task)


# --- export formats ----------------------------------------------------------

def save_model(graph, signature, checkpoint, folder, frozen_outputs=()):
    """Restores a checkpoint into a graph's variables and writes the graph to folder as a SavedModel (tag serve, the
    signature as serving_default); returns the graph frozen at frozen_outputs (variables as constants) if given."""
    with v1.Session(graph=graph) as session:
        v1.train.Saver().restore(session, checkpoint)
        builder = v1.saved_model.Builder(folder)
        builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING],
                                             signature_def_map={'serving_default': signature},
                                             strip_default_attrs=True)
        builder.save()
        if frozen_outputs:
            return v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), list(frozen_outputs))


def write_serving_model(arch, checkpoint, folder, decoder, beam_width, max_pixels):
    """The model as a SavedModel in folder for TensorFlow Serving or tf.saved_model.load: its serving_default
    signature takes image_bytes (string [n], encoded image files) and returns text (string [n]), confidence
    (float32 [n]) and readable (bool [n]); decoding, resizing and the decoder run in the graph. An image that cannot
    be decoded (or has more than max_pixels) reads as '' with confidence 0 and readable false, without failing the
    others."""
    with tf.Graph().as_default() as graph:
        image_bytes = v1.placeholder(tf.string, [None], name='image_bytes')
        images, where = decode_image_batch(image_bytes, arch.image_height, arch.image_width, arch.image_channel,
                                           max_pixels)                                  # [k + 1, h, w, c], [n]
        ids, confidence = reading_graph(arch, images, decoder, beam_width)
        readable = where >= 0
        row = tf.maximum(where, 0)
        signature = v1.saved_model.predict_signature_def({'image_bytes': image_bytes}, {
            'text': tf.where(readable, tf.gather(reading_text(arch.charset, ids), row), ''),
            'confidence': tf.where(readable, tf.gather(confidence, row), 0.0), 'readable': readable})
    save_model(graph, signature, checkpoint, folder)


ONNX_OPSET = 17


def write_portable_models(arch, checkpoint, folder, formats):
    """model.tflite and model_int8.tflite (its weights in 8 bits) for LiteRT, model.onnx for ONNX Runtime, in
    folder as formats ('tflite', 'onnx') say. One signature, serving_default: image (uint8 [n, h, w, c], resized as
    infer resizes) -> labels (int32 [n, time_steps], the greedy reading's indices into the charset, padded with -1)
    and confidence (float32 [n]); the RNN unrolled and the greedy decoding in the graph."""
    with tf.Graph().as_default() as graph:
        image = v1.placeholder(tf.uint8, [None, arch.image_height, arch.image_width, arch.image_channel],
                               name='image')
        labels, confidence = portable_reading_graph(arch, image)
        outputs = {'labels': tf.identity(labels, name='labels'),
                   'confidence': tf.identity(confidence, name='confidence')}
        signature = v1.saved_model.predict_signature_def({'image': image}, outputs)
    saved_model = os.path.join(folder, 'portable')
    frozen = save_model(graph, signature, checkpoint, saved_model, outputs)
    files = {}
    if 'tflite' in formats:
        for name, optimizations in (('model.tflite', []), ('model_int8.tflite', [tf.lite.Optimize.DEFAULT])):
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
            converter.optimizations = optimizations
            files[name] = converter.convert()
    if 'onnx' in formats:
        import tf2onnx
        names = ['image'] + list(outputs)
        files['model.onnx'] = tf2onnx.convert.from_graph_def(
            frozen, input_names=['image:0'], output_names=[name + ':0' for name in outputs], opset=ONNX_OPSET,
            tensors_to_rename={name + ':0': name for name in names})[0].SerializeToString()
    for name, data in files.items():
        with open(os.path.join(folder, name), 'wb') as file:
            file.write(data)
