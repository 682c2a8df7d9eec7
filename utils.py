"""Flags, charset, `id_label` image loading and metrics.

Every command-line flag of the project is declared here, once. Images are read
from `<id>_<label>.<ext>` files into a streaming `tf.data` pipeline that keeps
them uint8 until the graph; the model never opens a file.
"""
import ast
import errno
import io
import json
import logging
import math
import os
import re
import stat
import sys
import tempfile
import time

# Quiet by default: TensorFlow's C++ start-up lines (a "failed call to cuInit" on machines without a GPU reads as a
# failure; some are printed while TensorFlow loads, before any log level applies, so the process's stderr goes to
# /dev/null during its import) and OpenCV's own warnings beside the tool's. A TF_CPP_MIN_LOG_LEVEL the user sets
# wins, and then nothing is hidden.
QUIET = 'TF_CPP_MIN_LOG_LEVEL' not in os.environ
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('OPENCV_LOG_LEVEL', 'ERROR')

import absl.logging  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402

_stderr = os.dup(2) if QUIET else None
try:
    if QUIET:
        _null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(_null, 2)
        os.close(_null)
    import tensorflow as tf  # noqa: E402
finally:
    if QUIET:
        os.dup2(_stderr, 2)
        os.close(_stderr)

import cnn_lstm_otc_ocr as ocr  # noqa: E402  (after TensorFlow's quiet import; its registries name flag values)

flags = tf.compat.v1.flags

CONTEST_CHARSET = '0123456789+-*()'  # the contest's expressions: digits, operators, parentheses

# What to do, and on which folders.
flags.DEFINE_string('mode', 'train',
                    'main.py: train | val | infer | export; helper.py: rename | synth (its default: rename)')
flags.DEFINE_string('train_dir', './imgs/train/', 'folder of <id>_<label> training images')
flags.DEFINE_string('val_dir', './imgs/val/', 'folder of <id>_<label> validation images')
flags.DEFINE_string('infer_dir', './imgs/infer/', 'folder of images to read (any file names)')
flags.DEFINE_string('infer_output', './result.txt', 'file that --mode=infer writes')
flags.DEFINE_string('checkpoint_dir', './checkpoint/', 'where checkpoints and the model architecture are kept')
# absl.logging declares a log_dir of its own for log files it only writes when asked to; this one replaces it.
delattr(flags.FLAGS, 'log_dir')
flags.DEFINE_string('log_dir', './log', 'TensorBoard summaries')
flags.DEFINE_string('export_dir', '', 'folder that --mode=export writes the inference variables of the model to '
                    '(required there)')
EXPORT_FORMATS = ('saved_model', 'tflite', 'onnx')  # what --mode=export writes beside the model folder
flags.DEFINE_list('export_formats', list(EXPORT_FORMATS),
                  'export: saved_model (TensorFlow Serving), tflite (model.tflite and model_int8.tflite for LiteRT), '
                  'onnx (model.onnx for ONNX Runtime; needs the tf2onnx package)')
flags.DEFINE_boolean('overwrite', False, 'helper: replace the labels file and images of the same ids (any label, '
                     'train_dir or val_dir) that already exist; main.py --mode=export: replace the model in export_dir')

# The model's architecture (saved in architecture.json; val, infer and export read it from there). The defaults of
# the architecture and of training learn faster than the original project's, which ORIGINAL_FLAGS restores.
flags.DEFINE_integer('image_height', 40, 'images are resized to this height')
flags.DEFINE_integer('image_width', 120, 'images are resized to this width')
flags.DEFINE_integer('image_channel', 1, '1: read images as grey, 3: as colour')
flags.DEFINE_string('charset', CONTEST_CHARSET, 'the characters labels may contain')
flags.DEFINE_integer('cnn_count', 4, 'number of conv + batch norm + leaky ReLU + max-pool units')
flags.DEFINE_integer('out_channels', 64, 'filters of the last conv unit')
flags.DEFINE_float('leakiness', 0.01, 'slope of the leaky ReLU for negative inputs')
flags.DEFINE_integer('max_stepsize', 16,
                     'least number of RNN time steps: width pooling stops halving once another halving would '
                     'drop below it (16: 30 steps at width 120; 0: every conv unit halves the width)')
flags.DEFINE_enum('rnn_cell', 'gru', list(ocr.RNN_CELLS),
                  'RNN cell: LSTM, GRU, highway LSTM, recurrent highway network or nested LSTM')
flags.DEFINE_integer('rnn_layers', 2, 'stacked RNN layers')
flags.DEFINE_integer('num_hidden', 128, 'units of each RNN layer')
flags.DEFINE_boolean('bidirectional', True, 'run a second RNN stack backwards and concatenate the two')
flags.DEFINE_integer('rhn_depth', 3, 'highway micro-steps per time step of --rnn_cell=rhn')

# Training: where it starts, how long it runs, when it validates and saves.
flags.DEFINE_boolean('restore', False, 'resume training from the latest checkpoint in checkpoint_dir')
flags.DEFINE_string('init_from', '', 'train: start from the weights of this model folder (a checkpoint_dir, its best/, '
                    'or an export such as imgs/model) at step 0 with a fresh optimiser')
flags.DEFINE_integer('batch_size', 64, 'images per step (train, val and infer)')
flags.DEFINE_integer('num_epochs', 10000, 'stop training after this many passes over train_dir')
flags.DEFINE_integer('max_steps', 4000, 'stop training at this global step (0: no limit); the cosine schedule ends '
                     'there')
flags.DEFINE_integer('validation_steps', 500, 'validate on val_dir every this many steps')
flags.DEFINE_integer('save_steps', 1000, 'save a checkpoint every this many steps')
flags.DEFINE_integer('seed', 0, 'random seed of weights, shuffling and dropout')
flags.DEFINE_boolean('augment', False, 'train: change each training image at random (strokes, warp, blur, contrast, '
                     'brightness, colour, noise) in the input pipeline; never in val or infer')
flags.DEFINE_float('output_keep_prob', 0.8, 'keep probability of the RNN output dropout (training only)')

# Training: optimiser and learning-rate schedule.
flags.DEFINE_enum('optimizer', 'adam', list(ocr.OPTIMIZERS), 'Adam (beta1, beta2) or momentum SGD (momentum)')
flags.DEFINE_float('initial_learning_rate', 5e-4, 'peak learning rate (at step 0, or at the end of the warm-up)')
flags.DEFINE_enum('lr_schedule', 'cosine', list(ocr.LR_SCHEDULES),
                  'cosine: from initial_learning_rate down to 0 at --max_steps (or at --decay_steps when given); '
                  'exponential: times decay_rate every decay_steps (staircase); piecewise: times decay_rate at each '
                  'step of lr_boundaries')
flags.DEFINE_integer('decay_steps', 10000, 'exponential: the learning rate is multiplied by decay_rate every this '
                     'many steps; cosine: the step at which it reaches 0 (default: --max_steps)')
flags.DEFINE_float('decay_rate', 0.98, 'learning rate decay factor')
flags.DEFINE_list('lr_boundaries', [], 'piecewise schedule: steps at which the learning rate drops, e.g. 20000,40000')
flags.DEFINE_integer('warmup_steps', 200, 'raise the learning rate linearly from 0 over this many first steps')
flags.DEFINE_float('beta1', 0.9, 'Adam beta1')
flags.DEFINE_float('beta2', 0.999, 'Adam beta2')
flags.DEFINE_float('momentum', 0.9, 'momentum of --optimizer=momentum')
flags.DEFINE_float('clip_norm', 0.0, 'scale the gradients down together when their global norm is larger than this '
                   '(0: off)')

# The original project's model and training, where the defaults above differ (README, "Training on your own data").
ORIGINAL_FLAGS = ('--image_height=60', '--image_width=180', '--max_stepsize=0', '--rnn_cell=lstm', '--nobidirectional',
                  '--batch_size=40', '--initial_learning_rate=0.001', '--lr_schedule=exponential', '--warmup_steps=0',
                  '--max_steps=0')

# Devices and number formats.
flags.DEFINE_integer('num_gpus', 0, '0: run on the CPU; N >= 1: N towers on the first N GPUs (or CPUs, see '
                     'tower_device), the batch split evenly between them')
flags.DEFINE_enum('tower_device', 'gpu', ['gpu', 'cpu'],
                  'where --num_gpus towers run: GPUs, or as many logical CPU devices (for machines without GPUs)')
flags.DEFINE_enum('precision', 'fp32', ['fp32', 'bf16', 'fp16'],
                  'number format of the math: fp32; bf16 on a CPU with bf16 instructions (oneDNN automatic mixed '
                  'precision); fp16 on a GPU (automatic mixed precision with dynamic loss scaling). Variables, '
                  'CTC loss and decoders stay fp32')

# Reading (val, infer, export).
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'],
                  'val, infer, export and --init_from: the best validated model (the latest when none was '
                  'validated yet) or the latest')
flags.DEFINE_enum('decoder', 'beam', list(ocr.DECODERS), 'CTC decoder for val and infer')
flags.DEFINE_integer('beam_width', 10, 'beam width of --decoder=beam')

# Training on a cluster (TensorFlow's distributed runtime); TF_CONFIG describes it as well.
flags.DEFINE_list('ps_hosts', [], 'train on a cluster: host:port of every parameter-server task, e.g. ps0:2222')
flags.DEFINE_list('worker_hosts', [], 'train on a cluster: host:port of every worker task; worker 0 is the chief')
flags.DEFINE_string('job_name', '', 'train on a cluster: the job of this process, ps or worker')
flags.DEFINE_integer('task_index', 0, 'train on a cluster: the index of this process in its job')
flags.DEFINE_boolean('sync_replicas', True, 'train on a cluster: every step applies the mean gradient of one batch '
                     'of every worker (synchronous); --nosync_replicas: each worker applies its own (asynchronous)')
flags.DEFINE_integer('cluster_timeout', 300, 'train on a cluster: seconds to wait for the other tasks to be '
                     'reachable (and for the chief to initialise the model) before giving up')

# helper.py: dataset tools.
flags.DEFINE_string('labels_file', './imgs/labels.txt',
                    'helper rename: labels of images_dir; helper synth: where to write labels, when given '
                    '(else <out_dir>/labels.txt)')
flags.DEFINE_string('images_dir', './imgs/image_contest_level_1/', 'helper rename: contest images 0.png, 1.png, ...')
flags.DEFINE_integer('train_size', 80000, 'helper rename: images copied to train_dir, the rest go to val_dir')
flags.DEFINE_string('out_dir', './imgs/synth/', 'helper synth: folder to write images into')
flags.DEFINE_integer('num_images', 1000, 'helper synth: number of images to write')
flags.DEFINE_enum('text', 'expression', ['expression', 'random'],
                  'helper synth: contest-style expressions or random strings of --charset')
flags.DEFINE_enum('clutter', 'over', ['over', 'under'],
                  'helper synth: draw the noise dots, discs and lines over the text (they may hide part of a '
                  'character: harder training images) or under it (every character stays whole: test images)')
flags.DEFINE_list('font_files', ['/usr/share/fonts/**/*.[ot]tf', '/usr/local/share/fonts/**/*.[ot]tf',
                                 '~/.fonts/**/*.[ot]tf', '~/.local/share/fonts/**/*.[ot]tf', '/Library/Fonts/*.[ot]tf',
                                 'C:/Windows/Fonts/*.[ot]tf'],
                  'helper synth: glob patterns of TrueType and OpenType fonts to draw with; left at its default, the '
                  'captcha package\'s DroidSansMono joins them (the classic renderer also has OpenCV\'s Hershey fonts)')
flags.DEFINE_string('renderer', 'mix',
                    'helper synth: contest: the contest\'s own generator (the captcha package 0.2.4 with a thin '
                    'minus, DroidSansMono); captcha07: modelled on today\'s captcha package with any font found '
                    '(rotated, warped, overlapping characters, thin noise); classic: the project\'s own generator '
                    '(fonts, colours, clutter); mix: captcha07 or classic at random; or weights for each image\'s '
                    'choice, such as contest:8,captcha07:1,classic:1')
flags.DEFINE_float('blank_share', 0.0, 'helper synth: share of the images drawn without text (label empty, named '
                   '<id>_.png), to teach a model to read nothing where there is nothing')
flags.DEFINE_float('plain_share', 0.0, 'helper synth: share of the images without text that are one plain colour '
                   '(white, black, a grey or any colour) instead of the renderer\'s background and noise')
flags.DEFINE_integer('min_len', 1, 'helper synth --text=random: shortest string')
flags.DEFINE_integer('max_len', 8, 'helper synth --text=random: longest string')
flags.DEFINE_boolean('labelled_names', True, 'helper synth: name images <id>_<label>.png, else <id>.png '
                     '(labels only in the labels file)')

FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')
MAX_NAME_BYTES = 255  # longest file name of common file systems
NO_READABLE_IMAGES = 'not one image of this folder can be read'  # the error of a folder of unreadable files
CACHE_BYTES = 256 * 2 ** 20  # image_dataset keeps the decoded images of a data set that fits
MAX_IMAGE_PIXELS = 64 * 2 ** 20  # larger image files are unreadable: a text line is never that large
PIL.Image.MAX_IMAGE_PIXELS = None  # Pillow's own bound (a warning, then an error) gives way to that one

log = logging.getLogger('ocr')


class UserError(Exception):
    """A mistake in the user's flags, files or data; main prints it without a traceback."""


def setup_logging():
    """Plain messages: progress on stdout, warnings and errors on stderr; TensorFlow's own only when errors."""
    progress = logging.StreamHandler(sys.stdout)
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    log.handlers = [progress, problems]
    log.setLevel(logging.INFO)
    log.propagate = False
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
    absl.logging.set_verbosity(absl.logging.ERROR)  # what TensorFlow's SavedModel loader and tf2onnx log there


HELP = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')


def run_app(main, usage=None, setup=None):
    """tf.compat.v1.app.run(main), but --help prints usage (the script's docstring without it) and the tool's
    flags (--helpfull: every flag) and exits 0, and a flag value that does not parse (--precision=fp8, --seed=x)
    ends in one line naming it, exit code 2, not a traceback. setup() runs once the flags are parsed, before the
    app starts."""
    asked = [argument for argument in sys.argv[1:] if argument in HELP]
    if asked:
        full = asked[0] == '--helpfull'
        try:
            flag_help = FLAGS.get_help() if full else 'flags (all in utils.py):\n' + FLAGS.module_help(__name__)
            print('%s\n\n%s' % (usage or sys.modules['__main__'].__doc__, flag_help))
            sys.stdout.flush()
        except BrokenPipeError:  # `--help | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    try:
        FLAGS(sys.argv, known_only=True)
    except flags.Error as error:
        print('error: %s' % error, file=sys.stderr)
        sys.exit(2)
    if setup:
        setup()
    tf.compat.v1.app.run(main)


# (flag, lowest, highest, whether the lowest itself is allowed): every numeric flag's range, checked at start. The
# highest values lie far beyond any real use; they stop a typo (--batch_size=100000000) before it fills memory.
STEPS = 10 ** 12
NUMERIC_FLAGS = [
    ('initial_learning_rate', 0, math.inf, False), ('decay_rate', 0, 1, False), ('beta1', 0, 1, True),
    ('beta2', 0, 1, True), ('momentum', 0, 1, True), ('leakiness', 0, 1, True), ('output_keep_prob', 0, 1, False),
    ('clip_norm', 0, math.inf, True), ('blank_share', 0, 1, True), ('plain_share', 0, 1, True),
    ('image_height', 1, 1024, True),
    ('image_width', 1, 8192, True), ('image_channel', 1, 3, True), ('cnn_count', 1, 16, True),
    ('out_channels', 1, 4096, True), ('num_hidden', 1, 4096, True), ('rnn_layers', 1, 64, True),
    ('rhn_depth', 1, 64, True), ('batch_size', 1, 16384, True), ('save_steps', 1, STEPS, True),
    ('validation_steps', 1, STEPS, True), ('decay_steps', 1, STEPS, True), ('beam_width', 1, 1000, True),
    ('num_epochs', 1, 10 ** 9, True), ('max_steps', 0, STEPS, True), ('num_gpus', 0, 64, True),
    ('warmup_steps', 0, STEPS, True), ('max_stepsize', 0, 8192, True), ('seed', 0, 2 ** 31 - 1, True),
    ('num_images', 1, 10 ** 8, True), ('train_size', 0, 10 ** 9, True), ('min_len', 1, 1000, True),
    ('max_len', 1, 1000, True), ('task_index', 0, 10000, True), ('cluster_timeout', 1, 10 ** 6, True)]
RANGES = {name: (low, high, low_allowed) for name, low, high, low_allowed in NUMERIC_FLAGS}
MAX_BATCH_PIXELS = 2 ** 26  # batch_size x image_height x image_width; the first conv unit's output: 256 bytes each


def check_range(name, value, where=None):
    """A numeric flag's value (or an architecture field's) finite and in its range, else a UserError naming it."""
    low, high, low_allowed = RANGES[name]
    if not math.isfinite(value) or value < low or value > high or (value == low and not low_allowed):
        raise UserError('%s=%s: must be %s%s%s' % (
            where or '--' + name, value, 'at least %s' % low if low_allowed else 'more than %s' % low,
            '' if high == math.inf else ' and at most %s' % high, ' (a finite number)'
            if not math.isfinite(value) else ''))


def check_numeric_flags():
    """Every numeric flag in its range and --lr_boundaries step numbers; else a UserError naming the flag."""
    for name in RANGES:
        check_range(name, getattr(FLAGS, name))
    if not all(boundary.isdigit() for boundary in FLAGS.lr_boundaries):
        raise UserError('--lr_boundaries=%s: must be step numbers, e.g. 20000,40000' % ','.join(FLAGS.lr_boundaries))


MAIN_MODES = ('train', 'val', 'infer', 'export')


def check_main_flags():
    """main.py's flags: --mode, every numeric flag's range, and --precision for the device chosen."""
    if FLAGS.mode not in MAIN_MODES:
        raise UserError('--mode=%s: main.py runs train, val, infer or export' % FLAGS.mode)
    check_numeric_flags()
    unknown = [name for name in FLAGS.export_formats if name not in EXPORT_FORMATS]
    if unknown:
        raise UserError('--export_formats: unknown %s (choose among %s)' % (
            ', '.join(unknown), ','.join(EXPORT_FORMATS)))
    pixels = FLAGS.batch_size * FLAGS.image_height * FLAGS.image_width
    if pixels > MAX_BATCH_PIXELS:
        raise UserError('--batch_size=%d x --image_height=%d x --image_width=%d = %d pixels a batch: at most %d (the '
                        'first conv unit alone would need %.0f GB)' % (
                            FLAGS.batch_size, FLAGS.image_height, FLAGS.image_width, pixels, MAX_BATCH_PIXELS,
                            pixels * 256 / 1e9))
    check_precision()


def check_precision():
    """fp16 needs GPUs and bf16 the CPU: an error otherwise; bf16 on a CPU without bf16 instructions warns."""
    on_cpu = FLAGS.num_gpus == 0 or FLAGS.tower_device == 'cpu'
    if FLAGS.precision == 'fp16' and on_cpu:
        raise UserError('--precision=fp16 runs on GPUs (--num_gpus=1 or more); on the CPU use --precision=bf16')
    if FLAGS.precision == 'bf16' and not on_cpu:
        raise UserError('--precision=bf16 is for the CPU (--num_gpus=0); on GPUs use --precision=fp16')
    if FLAGS.precision == 'bf16' and not cpu_has_bf16():
        log.warning('warning: --precision=bf16: this CPU has no bf16 instructions (avx512_bf16 or amx_bf16); '
                    'bf16 will be emulated and slower than fp32')


def cpu_has_bf16():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            return any(flag in cpuinfo.read() for flag in ('avx512_bf16', 'amx_bf16'))
    except OSError:
        return False


def lr_boundaries():
    """--lr_boundaries as step numbers (check_numeric_flags has made sure they are)."""
    return [int(boundary) for boundary in FLAGS.lr_boundaries]


def decay_steps():
    """The schedule's --decay_steps, except that a cosine schedule ends at --max_steps unless --decay_steps is given."""
    if FLAGS.lr_schedule == 'cosine' and FLAGS.max_steps and not FLAGS['decay_steps'].present:
        return FLAGS.max_steps
    return FLAGS.decay_steps


def warmup_steps():
    """--warmup_steps, except that the default warm-up takes at most a tenth of a training's --max_steps."""
    if FLAGS.max_steps and not FLAGS['warmup_steps'].present:
        return min(FLAGS.warmup_steps, FLAGS.max_steps // 10)
    return FLAGS.warmup_steps


def check_schedule():
    """Learning-rate schedule flags that cannot work; a cosine schedule that ends before training does, or a warm-up
    that outlasts it, warns."""
    if FLAGS.lr_schedule == 'cosine' and decay_steps() < (FLAGS.max_steps or math.inf):
        log.warning('warning: --lr_schedule=cosine reaches a learning rate of 0 at step %d (--decay_steps), before '
                    'training ends (--max_steps=%d%s): the steps after it learn nothing', decay_steps(),
                    FLAGS.max_steps, '' if FLAGS.max_steps else ', no limit')
    if FLAGS.max_steps and warmup_steps() >= FLAGS.max_steps:
        log.warning('warning: --warmup_steps=%d is not shorter than --max_steps=%d: the learning rate never reaches '
                    '--initial_learning_rate=%g', warmup_steps(), FLAGS.max_steps, FLAGS.initial_learning_rate)
    if FLAGS.lr_schedule != 'piecewise':
        return
    if not FLAGS.lr_boundaries:
        raise UserError('--lr_schedule=piecewise needs --lr_boundaries, e.g. --lr_boundaries=20000,40000')
    if lr_boundaries() != sorted(set(lr_boundaries())):
        raise UserError('--lr_boundaries=%s: must be increasing step numbers' % ','.join(FLAGS.lr_boundaries))


def check_architecture(arch, source=None):
    """An architecture (from the flags, or architecture.json: its path is source) that cannot be built: a value of
    the wrong type or out of its flag's range, named by its flag or by the file and field."""
    for name in ocr.Architecture._fields:
        value, expected = getattr(arch, name), type(FLAGS[name].default)
        where = field_name(name, source)
        if type(value) is not expected and not (expected is float and type(value) is int):
            raise UserError('%s=%s: must be %s' % (where, json.dumps(value), {
                int: 'a whole number', float: 'a number', str: 'a string', bool: 'true or false'}[expected]))
        if name in RANGES:
            check_range(name, value, where)
    if arch.image_channel not in (1, 3):
        raise UserError('%s=%s: must be 1 (grey) or 3 (colour)' % (field_name('image_channel', source),
                                                                  arch.image_channel))
    if arch.rnn_cell not in ocr.RNN_CELLS:
        raise UserError('%s=%s: must be one of %s' % (field_name('rnn_cell', source), arch.rnn_cell,
                                                      ', '.join(ocr.RNN_CELLS)))
    if not 0 <= arch.max_stepsize <= arch.image_width:
        raise UserError('%s=%s: must be between 0 and %s=%s' % (
            field_name('max_stepsize', source), arch.max_stepsize, 'image_width' if source else '--image_width',
            arch.image_width))
    Charset(arch.charset)


def field_name(name, source):
    """How a message names an architecture field: by its flag, or by the file it was read from."""
    return '%s: %s' % (source, name) if source else '--' + name


# --- the cluster ---------------------------------------------------------------

CLUSTER_JOBS = ('chief', 'worker', 'ps')


class ClusterTask:
    """This process's task in a training cluster: cluster {job: ['host:port', ...]}, its job and index. The
    chief job's task, or worker 0 where there is no chief job, is the chief; chief and workers are the replicas
    that train, numbered chief first."""

    def __init__(self, cluster, job, index, source):
        self.cluster, self.job, self.index = cluster, job, index
        self.replica_jobs = [('chief', 0)] * len(cluster.get('chief', [])) + [
            ('worker', i) for i in range(len(cluster.get('worker', [])))]
        self.check(source)

    def check(self, source):
        if self.job not in CLUSTER_JOBS:
            raise UserError('%s: task type %r: main.py runs the tasks chief, worker and ps' % (source, self.job))
        if not self.cluster.get('ps') or not self.replica_jobs:
            raise UserError('%s: a cluster needs at least one ps task and one worker task: %s' % (
                source, json.dumps(self.cluster)))
        if len(self.cluster.get('chief', [])) > 1:
            raise UserError('%s: a cluster has at most one chief task, not %d' % (source, len(self.cluster['chief'])))
        if not 0 <= self.index < len(self.cluster.get(self.job, [])):
            raise UserError('%s: task %s %d, but the cluster has %d %s task(s)' % (
                source, self.job, self.index, len(self.cluster.get(self.job, [])), self.job))
        for job, addresses in self.cluster.items():
            for address in addresses:
                host, _, port = str(address).rpartition(':')
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise UserError('%s: %s task address %r: must be host:port' % (source, job, address))

    @property
    def device(self):
        return '/job:%s/task:%d' % (self.job, self.index)

    @property
    def address(self):
        return self.cluster[self.job][self.index]

    @property
    def is_chief(self):
        return self.replica_jobs[0] == (self.job, self.index)

    @property
    def replicas(self):
        return len(self.replica_jobs)

    @property
    def replica_index(self):
        """Which shard of train_dir this worker reads (chief: 0)."""
        return self.replica_jobs.index((self.job, self.index))

    def __str__(self):
        return '%s %d of the cluster (%s)' % (self.job, self.index, self.address)


def cluster_task():
    """This process's ClusterTask, from TF_CONFIG or from --ps_hosts, --worker_hosts, --job_name and --task_index;
    None when neither describes a cluster (training in one process)."""
    from_flags = FLAGS.ps_hosts or FLAGS.worker_hosts or FLAGS.job_name
    if os.environ.get('TF_CONFIG') and from_flags:
        raise UserError('both TF_CONFIG and --ps_hosts/--worker_hosts/--job_name describe a cluster: use one')
    if os.environ.get('TF_CONFIG'):
        return task_from_tf_config(os.environ['TF_CONFIG'])
    if not from_flags:
        return None
    if not (FLAGS.ps_hosts and FLAGS.worker_hosts and FLAGS.job_name):
        raise UserError('a cluster needs --ps_hosts, --worker_hosts and --job_name (given: %s)' % ', '.join(
            '--%s' % name for name in ('ps_hosts', 'worker_hosts', 'job_name') if FLAGS[name].value))
    if FLAGS.job_name not in ('ps', 'worker'):
        raise UserError('--job_name=%s: must be ps or worker' % FLAGS.job_name)
    return ClusterTask({'ps': FLAGS.ps_hosts, 'worker': FLAGS.worker_hosts}, FLAGS.job_name, FLAGS.task_index,
                       '--ps_hosts, --worker_hosts, --job_name, --task_index')


def addresses_list(addresses, job):
    """A TF_CONFIG job's addresses: a list of "host:port" strings, else a ValueError naming the job."""
    if not isinstance(addresses, list) or not all(isinstance(address, str) for address in addresses):
        raise ValueError('job %s: %s is not a list of "host:port" strings' % (job, json.dumps(addresses)))
    return addresses


def task_from_tf_config(text):
    """The ClusterTask of a TF_CONFIG value: {"cluster": {"ps": [...], "worker": [...], "chief": [...]},
    "task": {"type": "worker", "index": 0}}."""
    try:
        config = json.loads(text)
        cluster = {job: addresses_list(addresses, job) for job, addresses in config['cluster'].items()}
        task = config['task']
        job, index = task['type'], int(task.get('index', 0))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise UserError('TF_CONFIG is not a cluster description {"cluster": {...}, "task": {"type": ..., "index": '
                        '...}}: %s (%s: %s)' % (text[:200], type(error).__name__, error))
    unknown = sorted(set(cluster) - set(CLUSTER_JOBS))
    if unknown:
        raise UserError('TF_CONFIG: job(s) %s: main.py runs the tasks chief, worker and ps' % ', '.join(unknown))
    return ClusterTask(cluster, job, index, 'TF_CONFIG')


# --- files -------------------------------------------------------------------

def printable_name(name):
    r"""A file name as result files and messages write it, on one line and without a tab: a backslash, tab, newline
    and carriage return as \\ \t \n \r, and bytes that are not UTF-8 as \xNN."""
    raw = os.fsencode(name)
    escaped = raw.replace(b'\\', b'\\\\').replace(b'\t', b'\\t').replace(b'\n', b'\\n').replace(b'\r', b'\\r')
    return escaped.decode('utf-8', 'backslashreplace')


def write_atomically(path, text):
    """Writes a text file whole or not at all: a temporary file in the same folder, then a rename over path. The
    file keeps the mode of the one it replaces, a new one gets the umask's; a link's target is written, the link
    kept."""
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    handle, temporary = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), suffix='.tmp', dir=folder)
    try:
        with os.fdopen(handle, 'w', encoding='utf-8') as file:
            file.write(text)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OutputFile:
    """A file that a command writes when its work is done (infer's results), checked before the work starts, so
    that nothing is read in vain. A plain file (or a new one) is replaced atomically and keeps its mode; a link
    is followed and its target written, the link kept; a character device (/dev/stdout, /dev/null) or a FIFO is
    opened now and written through; anything else is refused."""

    def __init__(self, path, flag_name):
        self.flag = '--%s=%s' % (flag_name, path)
        if not path:
            raise UserError('--%s is empty: name a file to write' % flag_name)
        self.path, self.stream = os.path.realpath(path), None
        try:
            kind = stat.S_IFMT(os.stat(path).st_mode)  # of what a link leads to (/dev/stdout: a pipe, a terminal)
        except FileNotFoundError:
            kind = stat.S_IFREG
        except OSError as error:
            raise UserError('%s cannot be examined (%s)' % (self.flag, error.strerror))
        if kind == stat.S_IFDIR:
            raise UserError('%s is a folder: name a file to write' % self.flag)
        if kind == stat.S_IFREG:
            self.check_folder()
        elif kind in (stat.S_IFCHR, stat.S_IFIFO):
            self.stream = self.open_stream(path, kind == stat.S_IFIFO)
        else:
            raise UserError('%s is neither a file, a character device nor a FIFO: name a file to write' % self.flag)

    def check_folder(self):
        """The folder must exist and take a new file (a temporary one is made and removed)."""
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise UserError('%s: no such folder %s' % (self.flag, folder))
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise UserError('%s cannot be written (no write permission)' % self.flag)
        try:
            handle, trial = tempfile.mkstemp(prefix='.%s.' % os.path.basename(self.path), suffix='.tmp', dir=folder)
        except OSError as error:
            raise UserError('%s cannot be written: no file can be made in %s (%s)' % (self.flag, folder,
                                                                                     error.strerror))
        os.close(handle)
        os.remove(trial)

    def open_stream(self, path, fifo):
        """The device or FIFO, open for writing; a FIFO that no process reads is refused (writing would wait)."""
        try:
            descriptor = os.open(path, os.O_WRONLY | (os.O_NONBLOCK if fifo else 0))
        except OSError as error:
            hint = ': start its reader first' if fifo and error.errno == errno.ENXIO else ''
            raise UserError('%s cannot be opened for writing (%s)%s' % (
                self.flag, 'no process reads this FIFO' if hint else error.strerror, hint))
        if fifo:
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, 'w', encoding='utf-8')

    def write(self, text):
        """Writes text; when that fails, a UserError names the file, after text is printed on stdout so that the
        work is not lost."""
        try:
            if self.stream is None:
                write_atomically(self.path, text)
            else:
                with self.stream:
                    self.stream.write(text)
        except OSError as error:
            sys.stdout.write(text)
            raise UserError('%s could not be written (%s): its lines are printed above' % (self.flag,
                                                                                         error.strerror))


class Progress:
    """How far long work over `total` images is: `synth: 12,345/300,000 images (4.1%), 215 images/s, 22 min left`.

    On a terminal the line is rewritten in place, TERMINAL_SECONDS apart at most; elsewhere (a log file, a pipe) it
    is logged, LOG_SECONDS apart at most, so that logs stay readable. finish() writes the final line either way.
    `work` is a short word for the work; `clock` gives seconds (a test passes its own).
    """

    TERMINAL_SECONDS = 0.25
    LOG_SECONDS = 30

    def __init__(self, total, work, clock=time.monotonic):
        self.total, self.work, self.clock = total, work, clock
        self.stream = sys.stdout
        self.terminal = self.stream.isatty()
        self.start = self.shown = clock()
        self.done, self.width = 0, 0

    def update(self, done):
        """Records that `done` images are done; writes the line when it is due."""
        self.done = done
        now = self.clock()
        if now - self.shown >= (self.TERMINAL_SECONDS if self.terminal else self.LOG_SECONDS):
            self.shown = now
            self.show(self.line(now - self.start, final=False))

    def finish(self):
        """Writes the final line: images done, their rate and the time taken."""
        self.show(self.line(self.clock() - self.start, final=True))
        if self.terminal:
            self.stream.write('\n')
            self.stream.flush()

    def show(self, line):
        """Rewrites the terminal's line (padded over a longer one before it), or logs the line."""
        if not self.terminal:
            log.info(line)
            return
        self.stream.write('\r' + line.ljust(self.width))
        self.stream.flush()
        self.width = max(self.width, len(line))

    def line(self, seconds, final):
        """The progress line after `seconds`: the count and share done, then the rate and the time left (or, when
        final, the time taken) once there is a rate."""
        share = 100.0 * self.done / self.total if self.total else 100.0
        text = '%s: %s/%s images (%.1f%%)' % (self.work, format(self.done, ','), format(self.total, ','), share)
        if seconds <= 0 or not self.done:
            return text
        rate = self.done / seconds
        text += ', %s images/s' % (format(rate, ',.0f') if rate >= 10 else format(rate, '.1f'))
        if final:
            return text + ', took %s' % self.duration(seconds)
        return text + ', %s left' % self.duration(max(0, self.total - self.done) / rate)

    @staticmethod
    def duration(seconds):
        """Seconds as `45 s`, `22 min` or `3 h 05 min`."""
        if seconds < 59.5:
            return '%d s' % round(seconds)
        minutes = round(seconds / 60)
        return '%d min' % minutes if minutes < 60 else '%d h %02d min' % divmod(minutes, 60)


# --- charset -----------------------------------------------------------------

class Charset:
    """Maps label characters to class ids 0..len-1; the CTC blank is class len."""

    def __init__(self, characters):
        if not characters:
            raise UserError('--charset is empty')
        repeated = sorted({c for c in characters if characters.count(c) > 1})
        if repeated:
            raise UserError('--charset=%r repeats %r' % (characters, ''.join(repeated)))
        self.characters = characters
        self.index = {c: i for i, c in enumerate(characters)}

    @property
    def num_classes(self):
        return len(self.characters) + 1

    def unknown(self, text):
        return sorted(set(c for c in text if c not in self.index))

    def encode(self, text):
        return [self.index[c] for c in text]

    def decode(self, ids):
        return ''.join(self.characters[i] for i in ids if 0 <= i < len(self.characters))


def ctc_steps_needed(label):
    """Least number of time steps CTC needs for a label: one per character plus a blank between repeats."""
    return len(label) + sum(1 for a, b in zip(label, label[1:]) if a == b)


# --- file names --------------------------------------------------------------

def label_from_filename(name):
    """`12_(3-7)*5.png` -> `(3-7)*5`: everything after the first `_` up to the extension; `12_.png` -> '' (an
    image without text); `12.png` -> None."""
    stem = os.path.splitext(os.path.basename(name))[0]
    if '_' not in stem:
        return None
    return stem.split('_', 1)[1]


def id_label_name(image_id, label, extension):
    """`12`, `(3-7)*5`, `.png` -> `12_(3-7)*5.png`, the name label_from_filename reads back ('' gives `12_.png`)."""
    name = '%s_%s%s' % (image_id, label, extension)
    if len(name.encode('utf-8')) > MAX_NAME_BYTES:
        raise UserError('file name %r is longer than %d bytes' % (name, MAX_NAME_BYTES))
    return name


def image_id(name):
    """`12_(3-7)*5.png` and `12.png` -> `12`: a file name up to its first `_` or its extension."""
    return os.path.splitext(name)[0].split('_', 1)[0]


def shorten(items, limit=10):
    """Items for a message: the first `limit`, then how many more there are."""
    items = list(items)
    return items[:limit] + (['... and %d more' % (len(items) - limit)] if len(items) > limit else [])


def natural_key(name):
    """Sort key that puts 2.png before 10.png."""
    return [(0, int(part), '') if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r'(\d+)', name) if part]


def list_images(directory, flag_name):
    """Image files of a folder in natural order; a missing, empty or image-less folder is a UserError."""
    if os.path.isfile(directory):
        raise UserError('--%s=%s is a file, not a folder' % (flag_name, directory))
    if not os.path.isdir(directory):
        raise UserError('--%s=%s: no such folder' % (flag_name, directory))
    names = sorted(os.listdir(directory), key=natural_key)
    images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)
              and os.path.isfile(os.path.join(directory, n))]
    image_set = set(images)
    others = [n for n in names if n not in image_set]
    if not images:
        raise UserError('--%s=%s holds no images (%s)' % (flag_name, directory, '/'.join(IMAGE_EXTENSIONS)))
    if others:
        log.warning('warning: --%s=%s: ignoring %d entries that are not %s images, e.g. %s',
                    flag_name, directory, len(others), '/'.join(IMAGE_EXTENSIONS), printable_name(others[0]))
    return [os.path.join(directory, n) for n in images]


def list_labelled_images(directory, flag_name, charset, time_steps):
    """Paths and labels of the `<id>_<label>` images of a folder, checked against charset and time steps.

    Nothing but file names is read. Every problem is reported at once, with the files at fault.
    """
    paths = list_images(directory, flag_name)
    labels, problems = [], []
    for path in paths:
        name = printable_name(os.path.basename(path))
        label = label_from_filename(os.path.basename(path))
        if label is None:
            problems.append('%s: no label (expected <id>_<label>%s)' % (name, os.path.splitext(name)[1]))
        elif charset.unknown(label):
            problems.append('%s: label %r has %r, not in --charset=%r' % (
                name, label, ''.join(charset.unknown(label)), charset.characters))
        elif ctc_steps_needed(label) > time_steps:
            problems.append('%s: label %r needs %d time steps, the model has %d '
                            '(raise --max_stepsize or --image_width)' % (
                                name, label, ctc_steps_needed(label), time_steps))
        labels.append(label)
    if problems:
        raise UserError('--%s=%s: %d of %d images cannot be used:\n  %s' % (
            flag_name, directory, len(problems), len(paths), '\n  '.join(shorten(problems))))
    return paths, labels


# --- images ------------------------------------------------------------------

def opaque_uint8(image):
    """A decoded image of any depth, with or without alpha -> uint8 grey [h, w] or BGR [h, w, 3]. Transparency
    goes over white when the opaque pixels (the text, in a text image on a clear background) are dark, over black
    when they are light."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255
        colour = image[..., :3].astype(np.float32)
        opaque = alpha[..., 0] > 0.5
        paper = 255.0 if not opaque.any() or colour[opaque].mean() < 128 else 0.0
        image = np.round(colour * alpha + paper * (1 - alpha)).astype(np.uint8)
    return image


def stored_size(data):
    """The pixel count an image file's header gives (0 where Pillow cannot tell), before anything is decoded: a
    small file may decode to gigabytes."""
    try:
        with PIL.Image.open(io.BytesIO(data.tobytes())) as image:
            return image.width * image.height
    except Exception:  # noqa: BLE001  (any file Pillow cannot parse is left to OpenCV)
        return 0


def read_image(path, height, width, channels):
    """One image file -> (uint8 [height, width, channels], ok). An unreadable file gives zeros and ok=False."""
    path = os.fsdecode(path)
    data = np.fromfile(path, dtype=np.uint8) if os.path.isfile(path) else np.zeros(0, np.uint8)
    # JPEG: decoded as OpenCV does by default, turned by its EXIF orientation; others (PNG, BMP...) as stored,
    # alpha and depth included, for opaque_uint8.
    jpeg = data[:2].tobytes() == b'\xff\xd8'
    flags = (cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR) if jpeg else cv2.IMREAD_UNCHANGED
    size = stored_size(data)
    try:
        image = cv2.imdecode(data, flags) if data.size and size <= MAX_IMAGE_PIXELS else None
    except cv2.error:
        image = None
    if image is None:
        log.warning('warning: cannot read image %s%s', printable_name(path), ' (%d pixels: at most %d are read)' % (
            size, MAX_IMAGE_PIXELS) if size > MAX_IMAGE_PIXELS else '')
        return np.zeros((height, width, channels), np.uint8), False
    image = opaque_uint8(image)
    if channels == 1 and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif channels == 3 and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    interpolation = cv2.INTER_AREA if image.shape[0] > height or image.shape[1] > width else cv2.INTER_LINEAR
    image = cv2.resize(image, (width, height), interpolation=interpolation)
    return image.reshape(height, width, channels), True


def decode_image_bytes(encoded, height, width, channels):
    """One encoded image (string scalar: PNG, JPEG, BMP, GIF's first frame) -> uint8 [height, width, channels],
    read_image in TensorFlow ops for a served model: more than MAX_IMAGE_PIXELS is an error before decoding;
    transparency over a paper that contrasts with the opaque pixels, grey by the same weights as OpenCV, area
    resizing to shrink and bilinear to enlarge."""
    def with_alpha(rgb):                                                                      # [h, w, 3] -> [h, w, 4]
        return tf.concat([rgb, tf.fill(tf.concat([tf.shape(rgb)[:2], [1]], 0), tf.constant(255, tf.uint8))], 2)

    gif = tf.equal(tf.strings.substr(encoded, 0, 3), 'GIF')
    with tf.control_dependencies([tf.debugging.assert_less_equal(
            header_pixels(encoded, gif), tf.constant(MAX_IMAGE_PIXELS, tf.int64), message='image too large')]):
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


def decode_image_batch(image_bytes, height, width, channels):
    """Encoded images [n] -> (images [k, h, w, c] of the k that decode, then one blank image; where [n], each
    image's row in images, -1 for one that does not decode): a bad image among good ones does not fail the
    batch."""
    count = tf.size(image_bytes, out_type=tf.int64)
    decoded = tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes)).map(
        lambda index, encoded: (index, decode_image_bytes(encoded, height, width, channels))).ignore_errors()
    blank = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.zeros([height, width, channels], tf.uint8)))
    indices, images = decoded.concatenate(blank).batch(count + 1).get_single_element()      # [k + 1], [k + 1, ...]
    rows = tf.range(tf.size(indices, out_type=tf.int64) - 1)
    where = tf.scatter_nd(indices[:-1, None], rows + 1, [count]) - 1                          # [n]
    return images, where


class LabelledImages:
    """The images of a data set by number: paths and labels held in Python, each image decoded when asked for.

    When all the decoded images fit in cache_bytes they are kept after their first reading, so that later epochs
    and validations read no file; label_ids are the charset classes of each label padded with -1. An image found
    unreadable is not read (nor warned about) again; once every image is, reading raises NO_READABLE_IMAGES.
    """

    def __init__(self, paths, labels, charset, shape, cache_bytes):
        self.paths, self.shape = paths, shape
        self.labels = labels if labels is not None else [''] * len(paths)
        self.label_ids = np.full((len(self.labels), max(1, max(len(label) for label in self.labels))), -1, np.int32)
        for row, label in enumerate(self.labels):
            self.label_ids[row, :len(label)] = charset.encode(label)
        self.cache = {} if len(paths) * int(np.prod(shape)) <= cache_bytes else None
        self.unreadable = set()

    def check_readable(self, flag_name):
        """Reads images until one can be read; a UserError that names the folder when not one can (before any
        training, validation or reading starts)."""
        if not any(self.image(index)[1] for index in range(len(self.paths))):
            raise UserError('%s: %s (--%s, %d files)' % (NO_READABLE_IMAGES, os.path.dirname(self.paths[0]),
                                                         flag_name, len(self.paths)))

    def image(self, index):
        """(uint8 [h, w, c], ok) of image number index, as read_image gives it."""
        if index in self.unreadable:
            if len(self.unreadable) == len(self.paths):
                raise UserError('%s: %s (%d files)' % (NO_READABLE_IMAGES, os.path.dirname(self.paths[0]),
                                                       len(self.paths)))
            return np.zeros(self.shape, np.uint8), False
        image_ok = self.cache.get(index) if self.cache is not None else None
        if image_ok is None:
            image_ok = read_image(self.paths[index], *self.shape)
            if not image_ok[1]:
                self.unreadable.add(index)
            elif self.cache is not None:
                self.cache[index] = image_ok
        return image_ok

    def read(self, indices):
        """image numbers [n] -> images [n, h, w, c], ok [n], paths [n], labels [n], label_ids [n, max_len]"""
        indices = [int(index) for index in indices]
        images, ok = zip(*[self.image(index) for index in indices])
        return (np.stack(images), np.array(ok), np.array([os.fsencode(self.paths[index]) for index in indices], object),
                np.array([self.labels[index].encode() for index in indices], object), self.label_ids[indices])


def image_dataset(paths, labels, charset, batch_size, shape, shuffle=False, seed=0, repeat=1,
                  keep_unreadable=False, cache_bytes=CACHE_BYTES, augment=False, flag_name=None):
    """A streaming pipeline of batches {images uint8 [b, h, w, c], labels [b], label_ids [b, n], paths [b], ok [b]}.

    The graph holds image numbers (shuffled as the names themselves would be), never the names, which TensorFlow
    would copy at every graph optimisation and checkpoint; a batch of numbers is read in one Python call
    (LabelledImages: decoded images cached when they fit in cache_bytes), batches in parallel. Unreadable images
    are dropped (with a warning) unless keep_unreadable, when they come as zeros with ok False. The last batch is
    kept even when partial. With augment, every batch goes through augment_images (for training only). With
    flag_name (the folder's flag), a folder of which not one image can be read is a UserError now.
    """
    images = LabelledImages(paths, labels, charset, shape, cache_bytes)
    if flag_name:
        images.check_readable(flag_name)

    def read(indices):
        outputs = tf.numpy_function(images.read, [indices], [tf.uint8, tf.bool, tf.string, tf.string, tf.int32],
                                    stateful=False)
        shapes = [[None, *shape], [None], [None], [None], [None, images.label_ids.shape[1]]]
        for tensor, tensor_shape in zip(outputs, shapes):
            tensor.set_shape(tensor_shape)
        return dict(zip(['images', 'ok', 'paths', 'labels', 'label_ids'], outputs))

    dataset = tf.data.Dataset.range(len(paths))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat(repeat).batch(batch_size)
    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    if not keep_unreadable:
        dataset = dataset.filter(lambda image: image['ok'])
    dataset = dataset.batch(batch_size)
    if augment:
        dataset = dataset.map(lambda batch: dict(batch, images=augment_images(batch['images'])),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --- augmentation ------------------------------------------------------------
# Each change is drawn per image and left out for a random share of them; AUGMENTED_SHARE of the images are
# changed at all, so that the model also keeps seeing images as they are.

AUGMENTED_SHARE = 0.8

def per_image(batch_size, low, high, share, neutral=0.0):
    """[batch_size] values uniform in [low, high); a random (1 - share) of them `neutral` (no change)."""
    values = tf.random.uniform([batch_size], low, high)
    return tf.where(tf.random.uniform([batch_size]) < share, values, neutral)


def warp_transforms(batch_size, height, width):
    """[batch_size, 8] projective maps (output pixel -> input pixel, ImageProjectiveTransformV3's form) of a random
    rotation, shear, scale, shift and perspective about the image centre."""
    angle = per_image(batch_size, -0.1, 0.1, 0.7)                        # radians, about 6 degrees either way
    shear = per_image(batch_size, -0.3, 0.3, 0.5)
    scale_x = per_image(batch_size, 0.8, 1.05, 0.6, neutral=1.0)
    scale_y = per_image(batch_size, 0.8, 1.05, 0.6, neutral=1.0)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    shift_x = centre_x + per_image(batch_size, -0.03, 0.03, 0.5) * width
    shift_y = centre_y + per_image(batch_size, -0.06, 0.06, 0.5) * height
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
    pixels = choose(stroke < 0.2, darker, choose(stroke > 0.8, lighter, pixels))
    pixels = tf.raw_ops.ImageProjectiveTransformV3(
        images=pixels, transforms=warp_transforms(batch_size, height, width), output_shape=[height, width],
        fill_value=0.0, interpolation='BILINEAR', fill_mode='NEAREST')
    kernel = (tf.constant([1, 2, 1], tf.float32)[:, None] * [1, 2, 1] / 16)[..., None, None]          # [3, 3, 1, 1]
    blurred = tf.nn.depthwise_conv2d(pixels, tf.tile(kernel, [1, 1, channels, 1]), [1, 1, 1, 1], 'SAME')
    blur = per_image(batch_size, 0.3, 1.0, 0.3)[:, None, None, None]
    pixels += blur * (blurred - pixels)
    brightness = per_image(batch_size, -0.15, 0.15, 0.5)[:, None, None, None]
    gain = tf.where(tf.random.uniform([batch_size, 1, 1, 1]) < 0.5,
                    tf.random.uniform([batch_size, 1, 1, channels], 0.8, 1.2), 1.0)       # colour (grey: level)
    pixels = tf.clip_by_value((pixels + brightness) * gain, 0, 1)
    mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
    contrast = per_image(batch_size, 0.15, 1.2, 0.5, neutral=1.0)[:, None, None, None]   # down to faint text
    pixels = mean + (pixels - mean) * contrast                             # after the clip: fading keeps the text
    noise = per_image(batch_size, 0.01, 0.06, 0.3)[:, None, None, None]
    pixels += noise * tf.random.normal(tf.shape(pixels))
    augmented = tf.cast(tf.round(tf.clip_by_value(pixels, 0, 1) * 255), tf.uint8)
    return choose(tf.random.uniform([batch_size]) < AUGMENTED_SHARE, augmented, images)


# --- metrics -----------------------------------------------------------------

def edit_distance(a, b):
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def accuracy_and_cer(predictions, labels):
    """Sequence accuracy (exact matches / images) and character error rate (edits / label characters)."""
    if not labels:
        return 0.0, 0.0
    correct = sum(p == t for p, t in zip(predictions, labels))
    edits = sum(edit_distance(p, t) for p, t in zip(predictions, labels))
    return correct / len(labels), edits / max(1, sum(len(t) for t in labels))


# --- arithmetic --------------------------------------------------------------

_ARITHMETIC = re.compile(r'[0-9+\-*()]+')
_OPERATIONS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def expression_value(text):
    """Value of an arithmetic expression of integers (leading zeros allowed), + - * and parentheses; else None.

    The expression is parsed into a tree and only integer literals and the three binary operations are
    evaluated; it is never passed to eval.
    """
    if not _ARITHMETIC.fullmatch(text or ''):
        return None
    try:
        return _evaluate(ast.parse(re.sub(r'\d+', lambda number: str(int(number.group())), text), mode='eval').body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # malformed, too many digits, too deep
        return None


def _evaluate(node):
    """The value of a parsed expression of integers and + - *, else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATIONS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        return None if left is None or right is None else _OPERATIONS[type(node.op)](left, right)
    return None

