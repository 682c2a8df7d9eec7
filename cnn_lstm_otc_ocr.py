"""The recogniser's graph: images -> convnet -> stacked RNN -> per-time-step logits -> CTC loss / decoder.

A uint8 image batch [batch, height, width, channels] goes through `cnn_count` conv units (the CONV_UNITS
table), whose feature columns become a sequence of `time_steps` vectors for the RNN layers; a dense layer
gives logits over the charset plus the CTC blank (the last class). Nothing here reads files or flags.
"""
import collections
import math

import tensorflow as tf

v1 = tf.compat.v1

# The model's shape, as saved beside its checkpoint.
Architecture = collections.namedtuple('Architecture', [
    'image_height', 'image_width', 'image_channel', 'charset', 'cnn_count', 'out_channels', 'num_hidden',
    'leakiness', 'max_stepsize'])

# One row per conv unit: conv 3x3 (filters) -> batch norm -> leaky ReLU -> max-pool 2x2 SAME.
# The last unit has `out_channels` filters; a deeper net repeats the last row of the table.
CONV_UNIT_FILTERS = (64, 128, 128)
RNN_LAYERS = 2


# --- shapes ------------------------------------------------------------------

def conv_units(arch):
    """The conv table for an architecture: a (name, filters, pool height, pool width) row per unit.

    Width pooling halves the width only while the result stays at or above `max_stepsize` (0: always).
    """
    units, width = [], arch.image_width
    for index in range(arch.cnn_count):
        last = index == arch.cnn_count - 1
        filters = arch.out_channels if last else CONV_UNIT_FILTERS[min(index, len(CONV_UNIT_FILTERS) - 1)]
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


def time_steps(arch):
    """Number of RNN time steps (CTC's sequence length) for every image of this architecture."""
    return feature_shape(arch)[0]


# --- layers ------------------------------------------------------------------

def conv_unit(inputs, name, filters, pool, leakiness, training):
    """conv 3x3 -> batch norm -> leaky ReLU -> max-pool SAME. [b, h, w, c] -> [b, ceil(h/ph), ceil(w/pw), filters]"""
    with v1.variable_scope(name):
        kernel = v1.get_variable('kernel', [3, 3, inputs.shape[-1], filters],
                                 initializer=v1.initializers.he_normal())
        outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding='SAME')   # [b, h, w, filters]
        outputs = batch_norm(outputs, training)
        outputs = tf.nn.leaky_relu(outputs, alpha=leakiness)
        return tf.nn.max_pool2d(outputs, ksize=pool, strides=pool, padding='SAME')


def batch_norm(inputs, training, decay=0.99, epsilon=1e-5):
    """Batch norm over [b, h, w, c]: batch statistics (moving averages updated) in training, moving ones after."""
    channels = inputs.shape[-1]
    scale = v1.get_variable('gamma', [channels], initializer=v1.ones_initializer())
    offset = v1.get_variable('beta', [channels], initializer=v1.zeros_initializer())
    moving_mean = v1.get_variable('moving_mean', [channels], initializer=v1.zeros_initializer(), trainable=False)
    moving_variance = v1.get_variable('moving_variance', [channels], initializer=v1.ones_initializer(),
                                      trainable=False)
    if not training:
        outputs, _, _ = v1.nn.fused_batch_norm(inputs, scale, offset, moving_mean, moving_variance,
                                               epsilon=epsilon, is_training=False)
        return outputs
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

class LSTMCell:
    """Long short-term memory (Hochreiter and Schmidhuber 1997), forget-gate bias 1:

        i, f, o, g = split(W [x_t, h_{t-1}] + b)
        c_t = sigmoid(f + 1) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)

    Variables are made when the cell is, so none is made inside the RNN loop. State (c, h).
    """

    def __init__(self, input_size, num_units, name):
        self.num_units = num_units
        with v1.variable_scope(name):
            self.kernel = v1.get_variable('kernel', [input_size + num_units, 4 * num_units],
                                          initializer=v1.glorot_uniform_initializer())
            self.bias = v1.get_variable('bias', [4 * num_units], initializer=v1.zeros_initializer())

    @property
    def state_size(self):
        return (self.num_units, self.num_units)

    @property
    def output_size(self):
        return self.num_units

    def zero_state(self, batch_size, dtype):
        return tuple(tf.zeros([batch_size, size], dtype) for size in self.state_size)

    def __call__(self, inputs, state):
        c, h = state
        gates = tf.matmul(tf.concat([inputs, h], 1), self.kernel) + self.bias
        i, f, o, g = tf.split(gates, 4, axis=1)
        c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (c, h)


class StackedCell:
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

    def zero_state(self, batch_size, dtype):
        return tuple(cell.zero_state(batch_size, dtype) for cell in self.cells)

    def __call__(self, inputs, state):
        new_state = []
        for cell, cell_state in zip(self.cells, state):
            inputs, cell_state = cell(inputs, cell_state)
            if self.keep_prob < 1.0:
                inputs = tf.nn.dropout(inputs, rate=1.0 - self.keep_prob)
            new_state.append(cell_state)
        return inputs, tuple(new_state)


def rnn_stack(input_size, num_units, num_layers, keep_prob, name):
    """`num_layers` LSTM layers of `num_units`, [b, t, input_size] -> [b, t, num_units] when run."""
    cells = [LSTMCell(input_size if layer == 0 else num_units, num_units, '%s/layer_%d' % (name, layer + 1))
             for layer in range(num_layers)]
    return StackedCell(cells, keep_prob)


# --- the model ---------------------------------------------------------------

class LSTMOCR:
    """The recogniser in one mode: 'train' (batch statistics, dropout), 'val' or 'infer'.

    Build it inside a variable scope with reuse to share weights between a training and an evaluation graph.
    """

    def __init__(self, mode, arch, keep_prob=1.0):
        if mode not in ('train', 'val', 'infer'):
            raise ValueError('mode must be train, val or infer, not %r' % mode)
        self.mode = mode
        self.arch = arch
        self.training = mode == 'train'
        self.keep_prob = keep_prob if self.training else 1.0
        self.num_classes = len(arch.charset) + 1
        self.time_steps = time_steps(arch)

    def logits(self, images):
        """uint8 images [b, h, w, c] -> time-major float32 logits [time_steps, b, num_classes]."""
        features = self.conv_tower(images)                             # [b, time_steps, feature_size]
        outputs = self.rnn(features)                                   # [b, time_steps, num_hidden]
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
        """[b, time_steps, n] -> [b, time_steps, num_hidden]"""
        cell = rnn_stack(features.shape[-1], self.arch.num_hidden, RNN_LAYERS, self.keep_prob, 'rnn')
        outputs, _ = v1.nn.dynamic_rnn(cell, features, sequence_length=self.sequence_length(tf.shape(features)[0]),
                                       dtype=features.dtype, scope='rnn')
        return outputs

    def sequence_length(self, batch_size):
        """[batch_size] of time_steps: every image of an architecture has the same number of steps."""
        return tf.fill([batch_size], self.time_steps)

    def loss(self, logits, label_ids):
        """Mean CTC loss of a batch; label_ids [b, max_len] int32, padded with -1."""
        losses = v1.nn.ctc_loss(dense_to_sparse(label_ids), logits, self.sequence_length(tf.shape(logits)[1]),
                                time_major=True)
        return tf.reduce_mean(losses)

    def decode(self, logits, decoder='beam', beam_width=10):
        """Class ids of the best path [b, max_decoded_len], padded with -1."""
        sequence_length = self.sequence_length(tf.shape(logits)[1])
        if decoder == 'beam':
            decoded, _ = tf.nn.ctc_beam_search_decoder(logits, sequence_length, beam_width=beam_width, top_paths=1)
        elif decoder == 'greedy':
            decoded, _ = tf.nn.ctc_greedy_decoder(logits, sequence_length, merge_repeated=True)
        else:
            raise ValueError('decoder must be beam or greedy, not %r' % decoder)
        return tf.sparse.to_dense(decoded[0], default_value=-1)


def dense_to_sparse(label_ids):
    """[b, max_len] int32 padded with -1 -> the SparseTensor of labels that CTC takes."""
    indices = tf.where(label_ids >= 0)
    return tf.SparseTensor(indices, tf.gather_nd(label_ids, indices), tf.shape(label_ids, out_type=tf.int64))


def learning_rate(global_step, initial, decay_steps, decay_rate):
    """Staircase exponential decay: initial * decay_rate ** floor(step / decay_steps)."""
    return v1.train.exponential_decay(initial, global_step, decay_steps, decay_rate, staircase=True)


def optimizer(name, rate, beta1, beta2, momentum):
    if name == 'adam':
        return v1.train.AdamOptimizer(rate, beta1=beta1, beta2=beta2)
    return v1.train.MomentumOptimizer(rate, momentum)


def train_op(loss, opt, global_step):
    """Applies the gradients of loss after the batch-norm moving statistics are updated."""
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
        return opt.minimize(loss, global_step=global_step)
