"""Flags, charset, `id_label` image files, the model folder and metrics: everything but the graph, without TensorFlow.

Every command-line flag of both tools is declared here, once, with its range; main.py and helper.py each list their
own in --help. Images are read from `<id>_<label>.<ext>` files one by one (cnn_lstm_otc_ocr turns a LabelledImages
into a streaming tf.data pipeline); a model folder is read and written through ModelFolder.
"""
import ast
import collections
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time

MAX_IMAGE_PIXELS = 2 ** 24  # larger image files, of any format, are not decoded: a text line is never that large
os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'] = str(MAX_IMAGE_PIXELS)  # OpenCV reads it once, when it loads
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402; before our --log_dir, which replaces its own (for log files)

CONTEST_CHARSET = '0123456789+-*()'  # the contest's expressions: digits, operators, parentheses
EXPORT_FORMATS = ('saved_model', 'tflite', 'onnx')  # what --mode=export writes beside the model folder
STEPS = 10 ** 12  # the highest step flags: far beyond any real use, they stop a typo before it fills memory

# What to do, and on which folders.
flags.DEFINE_enum('mode', None, ['train', 'val', 'infer', 'export', 'rename', 'synth'],
                  'what the tool does: main.py train (default), val, infer, export; helper.py rename (default), synth')
flags.DEFINE_string('train_dir', './imgs/train/', 'folder of <id>_<label> training images')
flags.DEFINE_string('val_dir', './imgs/val/', 'folder of <id>_<label> validation images')
flags.DEFINE_string('infer_dir', './imgs/infer/', 'folder of images to read (any file names)')
flags.DEFINE_string('infer_output', './result.txt', 'file that --mode=infer writes')
flags.DEFINE_string('checkpoint_dir', './checkpoint/', 'where checkpoints and the model architecture are kept')
flags.DEFINE_string('log_dir', './log', 'TensorBoard summaries', allow_override=True)
flags.DEFINE_string('export_dir', '', 'folder that --mode=export writes the inference variables of the model to '
                    '(required there)')
flags.DEFINE_list('export_formats', list(EXPORT_FORMATS),
                  'export: saved_model (TensorFlow Serving), tflite (model.tflite and model_int8.tflite for LiteRT), '
                  'onnx (model.onnx for ONNX Runtime; needs the tf2onnx package)')
flags.DEFINE_boolean('overwrite', False, 'replace what the output already holds: train, a model in checkpoint_dir '
                     '(its checkpoints removed first); export, the model in export_dir; helper.py, the labels file and '
                     'the images of the same ids')

# The model's architecture (saved in architecture.json; val, infer and export read it from there). The defaults of
# the architecture and of training learn faster than the original project's, which ORIGINAL_FLAGS restores.
flags.DEFINE_integer('image_height', 40, 'images are resized to this height', lower_bound=1, upper_bound=1024)
flags.DEFINE_integer('image_width', 120, 'images are resized to this width', lower_bound=1, upper_bound=8192)
flags.DEFINE_integer('image_channel', 1, '1: read images as grey, 3: as colour', lower_bound=1, upper_bound=3)
flags.DEFINE_string('charset', CONTEST_CHARSET, 'the characters labels may contain')
flags.DEFINE_integer('cnn_count', 4, 'number of conv + batch norm + leaky ReLU + max-pool units', lower_bound=1,
                     upper_bound=16)
flags.DEFINE_integer('out_channels', 64, 'filters of the last conv unit', lower_bound=1, upper_bound=4096)
flags.DEFINE_float('leakiness', 0.01, 'slope of the leaky ReLU for negative inputs', lower_bound=0, upper_bound=1)
flags.DEFINE_integer('max_stepsize', 16,
                     'least number of RNN time steps: width pooling stops halving once another halving would '
                     'drop below it (16: 30 steps at width 120; 0: every conv unit halves the width)', lower_bound=0,
                     upper_bound=8192)
flags.DEFINE_enum('rnn_cell', 'gru', ['lstm', 'gru', 'hlstm', 'rhn', 'nlstm'],
                  'RNN cell: LSTM, GRU, highway LSTM, recurrent highway network or nested LSTM')
flags.DEFINE_integer('rnn_layers', 2, 'stacked RNN layers', lower_bound=1, upper_bound=64)
flags.DEFINE_integer('num_hidden', 128, 'units of each RNN layer', lower_bound=1, upper_bound=4096)
flags.DEFINE_boolean('bidirectional', True, 'run a second RNN stack backwards and concatenate the two')
flags.DEFINE_integer('rhn_depth', 3, 'highway micro-steps per time step of --rnn_cell=rhn', lower_bound=1,
                     upper_bound=64)

# Training: where it starts, how long it runs, when it validates and saves.
flags.DEFINE_boolean('restore', False, 'resume training from the latest checkpoint in checkpoint_dir')
flags.DEFINE_string('init_from', '', 'train: start from the weights of this model folder (a checkpoint_dir, its best/, '
                    'or an export such as imgs/model) at step 0 with a fresh optimiser')
flags.DEFINE_integer('batch_size', 64, 'images per step (train, val and infer)', lower_bound=1, upper_bound=16384)
flags.DEFINE_integer('num_epochs', 10000, 'stop training after this many passes over train_dir', lower_bound=1,
                     upper_bound=10 ** 9)
flags.DEFINE_integer('max_steps', 4000, 'stop training at this global step (0: no limit; with --max_minutes only '
                     'when given); the cosine schedule ends there', lower_bound=0, upper_bound=STEPS)
flags.DEFINE_float('max_minutes', 0, 'stop training this many minutes after its first step (0: no limit), the '
                   'cosine schedule fitted to end then', lower_bound=0, upper_bound=10 ** 6)
flags.DEFINE_integer('patience', 0, 'stop training after this many validations without a better one (0: never)',
                     lower_bound=0, upper_bound=STEPS)
flags.DEFINE_integer('validation_steps', 500, 'validate on val_dir every this many steps', lower_bound=1,
                     upper_bound=STEPS)
flags.DEFINE_integer('save_steps', 1000, 'save a checkpoint every this many steps', lower_bound=1, upper_bound=STEPS)
flags.DEFINE_integer('seed', 0, 'random seed of weights, shuffling and dropout; helper.py: of the split and the images',
                     lower_bound=0, upper_bound=2 ** 31 - 1)
flags.DEFINE_boolean('augment', False, 'train: change training images at random (strokes, warp, blur, contrast, '
                     'brightness, colour, noise), a share rising from none to 60% over the first half of the '
                     'learning-rate schedule; never in val or infer')
flags.DEFINE_float('output_keep_prob', 0.8, 'keep probability of the RNN output dropout (training only)',
                   lower_bound=0, upper_bound=1)

# Training: optimiser and learning-rate schedule.
flags.DEFINE_enum('optimizer', 'adam', ['adam', 'momentum'], 'Adam (beta1, beta2) or momentum SGD (momentum)')
flags.DEFINE_float('initial_learning_rate', 1e-3, 'peak learning rate (at step 0, or at the end of the warm-up)',
                   lower_bound=0)
flags.DEFINE_enum('lr_schedule', 'cosine', ['exponential', 'cosine', 'piecewise'],
                  'cosine: from initial_learning_rate down to 0 at --max_steps (or at --decay_steps when given); '
                  'exponential: times decay_rate every decay_steps (staircase); piecewise: times decay_rate at each '
                  'step of lr_boundaries')
flags.DEFINE_integer('decay_steps', 10000, 'exponential: the learning rate is multiplied by decay_rate every this '
                     'many steps; cosine: the step at which it reaches 0 (default: --max_steps)', lower_bound=1,
                     upper_bound=STEPS)
flags.DEFINE_float('decay_rate', 0.98, 'learning rate decay factor', lower_bound=0, upper_bound=1)
flags.DEFINE_list('lr_boundaries', [], 'piecewise schedule: steps at which the learning rate drops, e.g. 20000,40000')
flags.DEFINE_integer('warmup_steps', 200, 'raise the learning rate linearly from 0 over this many first steps',
                     lower_bound=0, upper_bound=STEPS)
flags.DEFINE_float('beta1', 0.9, 'Adam beta1', lower_bound=0, upper_bound=1)
flags.DEFINE_float('beta2', 0.999, 'Adam beta2', lower_bound=0, upper_bound=1)
flags.DEFINE_float('momentum', 0.9, 'momentum of --optimizer=momentum', lower_bound=0, upper_bound=1)
flags.DEFINE_float('clip_norm', 0.0, 'scale the gradients down together when their global norm is larger than this '
                   '(0: off)', lower_bound=0)
flags.DEFINE_float('moving_average_decay', 0.999, 'validate and save an exponential moving average of the weights, '
                   'with this decay per step (0: the weights of the last step)', lower_bound=0)

# The original project's model and training, where the defaults above differ (README, "Training on your own data").
ORIGINAL_FLAGS = ('--image_height=60', '--image_width=180', '--max_stepsize=0', '--rnn_cell=lstm', '--nobidirectional',
                  '--batch_size=40', '--initial_learning_rate=0.001', '--lr_schedule=exponential', '--warmup_steps=0',
                  '--max_steps=0')

# Devices and number formats.
flags.DEFINE_integer('num_gpus', 0, '0: run on the CPU; N >= 1: N towers on the first N GPUs (or CPUs, see '
                     'tower_device), the batch split evenly between them', lower_bound=0, upper_bound=64)
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
flags.DEFINE_enum('decoder', 'beam', ['beam', 'greedy'], 'CTC decoder of val, infer and the SavedModel of export')
flags.DEFINE_integer('beam_width', 10, 'beam width of --decoder=beam', lower_bound=1, upper_bound=1000)

# Training on a cluster (TensorFlow's distributed runtime); TF_CONFIG describes it as well.
flags.DEFINE_list('ps_hosts', [], 'train on a cluster: host:port of every parameter-server task, e.g. ps0:2222')
flags.DEFINE_list('worker_hosts', [], 'train on a cluster: host:port of every worker task; worker 0 is the chief')
flags.DEFINE_enum('job_name', None, ['ps', 'worker'], 'train on a cluster: the job of this process')
flags.DEFINE_integer('task_index', 0, 'train on a cluster: the index of this process in its job', lower_bound=0,
                     upper_bound=10000)
flags.DEFINE_boolean('sync_replicas', True, 'train on a cluster: every step applies the mean gradient of one batch '
                     'of every worker (synchronous); --nosync_replicas: each worker applies its own (asynchronous)')
flags.DEFINE_integer('cluster_timeout', 300, 'train on a cluster: seconds to wait for the other tasks to be '
                     'reachable (and for the chief to initialise the model) before giving up', lower_bound=1,
                     upper_bound=10 ** 6)

# helper.py: dataset tools.
flags.DEFINE_string('labels_file', './imgs/labels.txt',
                    'rename: labels of images_dir; synth: where to write labels, when given (else '
                    '<out_dir>/labels.txt)')
flags.DEFINE_string('images_dir', './imgs/image_contest_level_1/', 'rename: contest images 0.png, 1.png, ...')
flags.DEFINE_integer('train_size', 80000, 'rename: images copied to train_dir, the rest go to val_dir', lower_bound=0,
                     upper_bound=10 ** 9)
flags.DEFINE_string('out_dir', './imgs/synth/', 'synth: folder to write images into')
flags.DEFINE_integer('num_images', 1000, 'synth: number of images to write', lower_bound=1, upper_bound=10 ** 8)
flags.DEFINE_integer('synth_height', 60, 'synth: height of the images drawn (the contest\'s)', lower_bound=16,
                     upper_bound=1024)
flags.DEFINE_integer('synth_width', 180, 'synth: width of the images drawn (the contest\'s)', lower_bound=16,
                     upper_bound=8192)
flags.DEFINE_enum('text', 'expression', ['expression', 'random'],
                  'synth: contest-style expressions or random strings of --charset')
flags.DEFINE_enum('clutter', 'over', ['over', 'under'],
                  'synth: draw the noise dots, discs and lines over the text (they may hide part of a character: '
                  'harder training images) or under it (every character stays whole: test images)')
flags.DEFINE_list('font_files', ['/usr/share/fonts/**/*.[ot]tf', '/usr/local/share/fonts/**/*.[ot]tf',
                                 '~/.fonts/**/*.[ot]tf', '~/.local/share/fonts/**/*.[ot]tf', '/Library/Fonts/*.[ot]tf',
                                 'C:/Windows/Fonts/*.[ot]tf'],
                  'synth: glob patterns of TrueType and OpenType fonts to draw with; left at its default, the '
                  'captcha package\'s DroidSansMono joins them (the classic renderer also has OpenCV\'s Hershey fonts)')
flags.DEFINE_string('renderer', 'mix',
                    'synth: contest: the contest\'s own generator (the captcha package 0.2.4 with a thin minus, '
                    'DroidSansMono); captcha07: modelled on today\'s captcha package with any font found (rotated, '
                    'warped, overlapping characters, thin noise); classic: the project\'s own generator (fonts, '
                    'colours, clutter); mix: captcha07 or classic at random; or weights for each image\'s choice, such '
                    'as contest:8,captcha07:1,classic:1')
flags.DEFINE_float('blank_share', 0.0, 'synth: share of the images drawn without text (label empty, named '
                   '<id>_.png), to teach a model to read nothing where there is nothing', lower_bound=0, upper_bound=1)
flags.DEFINE_float('plain_share', 0.0, 'synth: share of the images without text that are one plain colour (white, '
                   'black, a grey or any colour) instead of the renderer\'s background and noise', lower_bound=0,
                   upper_bound=1)
flags.DEFINE_integer('min_len', 1, 'synth --text=random: shortest string', lower_bound=1, upper_bound=1000)
flags.DEFINE_integer('max_len', 8, 'synth --text=random: longest string', lower_bound=1, upper_bound=1000)
flags.DEFINE_boolean('labelled_names', True, 'synth: name images <id>_<label>.png, else <id>.png (labels only in '
                     'the labels file)')

FLAGS = flags.FLAGS
# Each tool's own flags, which its --help lists; the other tool's are refused. Both take the shared ones.
SHARED_FLAGS = ('mode', 'train_dir', 'val_dir', 'charset', 'seed', 'overwrite')
HELPER_ONLY_FLAGS = ('labels_file', 'images_dir', 'train_size', 'out_dir', 'num_images', 'synth_height',
                     'synth_width', 'text', 'clutter', 'font_files', 'renderer', 'blank_share', 'plain_share',
                     'min_len', 'max_len', 'labelled_names')
MAIN_ONLY_FLAGS = tuple(name for name in FLAGS if FLAGS.find_module_defining_flag(name) == __name__
                        and name not in SHARED_FLAGS + HELPER_ONLY_FLAGS)
TOOL_FLAGS = {'main.py': (SHARED_FLAGS + MAIN_ONLY_FLAGS, HELPER_ONLY_FLAGS),
              'helper.py': (SHARED_FLAGS + HELPER_ONLY_FLAGS, MAIN_ONLY_FLAGS)}


def rule(names, holds, message):
    """A rule between flags, checked as they are parsed: holds(flag values) false is an error naming them."""
    flags.register_multi_flags_validator(names, lambda values: holds(**values), message)


for _name in ('initial_learning_rate', 'decay_rate', 'output_keep_prob'):
    flags.register_validator(_name, lambda value: value > 0, 'must be more than 0')
for _name in [name for name in FLAGS if isinstance(FLAGS[name].parser, flags.FloatParser)]:
    flags.register_validator(_name, math.isfinite, 'must be a finite number')
flags.register_validator('moving_average_decay', lambda value: value < 1, 'must be less than 1 (0: off)')
flags.register_validator('image_channel', lambda value: value in (1, 3), 'must be 1 (grey) or 3 (colour)')
flags.register_validator('lr_boundaries', lambda steps: all(step.isdigit() for step in steps) and [
    int(step) for step in steps] == sorted({int(step) for step in steps}), 'must be increasing step numbers, e.g. '
    '20000,40000')
flags.register_validator('export_formats', lambda names: set(names) <= set(EXPORT_FORMATS),
                         'must be among %s' % ','.join(EXPORT_FORMATS))
rule(['max_stepsize', 'image_width'], lambda max_stepsize, image_width: max_stepsize <= image_width,
     'must be between 0 and --image_width')
rule(['lr_schedule', 'lr_boundaries'], lambda lr_schedule, lr_boundaries: lr_schedule != 'piecewise' or lr_boundaries,
     '--lr_schedule=piecewise needs --lr_boundaries, e.g. --lr_boundaries=20000,40000')
rule(['restore', 'overwrite'], lambda restore, overwrite: not (restore and overwrite),
     '--restore continues the model in checkpoint_dir, --overwrite replaces it: choose one')
rule(['restore', 'init_from'], lambda restore, init_from: not (restore and init_from),
     '--restore continues a training, --init_from starts a new one from a model: choose one')
rule(['precision', 'num_gpus', 'tower_device'], lambda precision, num_gpus, tower_device: precision != 'fp16' or (
    num_gpus and tower_device == 'gpu'), '--precision=fp16 runs on GPUs (--num_gpus=1 or more); on the CPU use '
     '--precision=bf16')
rule(['precision', 'num_gpus', 'tower_device'], lambda precision, num_gpus, tower_device: precision != 'bf16' or not (
    num_gpus and tower_device == 'gpu'), '--precision=bf16 is for the CPU (--num_gpus=0); on GPUs use --precision=fp16')
rule(['ps_hosts', 'worker_hosts', 'job_name'], lambda ps_hosts, worker_hosts, job_name: bool(ps_hosts) == bool(
    worker_hosts) == bool(job_name), 'a cluster needs --ps_hosts, --worker_hosts and --job_name')

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')
MAX_NAME_BYTES = 255  # longest file name of common file systems
NO_READABLE_IMAGES = 'not one image of this folder can be read'  # the error of a folder of unreadable files
CACHE_BYTES = 256 * 2 ** 20  # LabelledImages keeps the decoded images of a data set that fits

log = logging.getLogger('ocr')


class UserError(Exception):
    """A mistake in the user's flags, files or data; main prints it without a traceback."""


def setup_logging():
    """Plain messages: progress on stdout, warnings and errors on stderr; absl's (TensorFlow's SavedModel loader,
    tf2onnx) and OpenCV's own only when errors."""
    progress = logging.StreamHandler(sys.stdout)
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    log.handlers = [progress, problems]
    log.setLevel(logging.INFO)
    log.propagate = False
    absl_logging.set_verbosity(absl_logging.ERROR)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def run(main, tool, parsed=lambda: None):
    """absl.app.run(main) for a tool (main.py or helper.py): --help lists the tool's own flags (--helpfull every
    flag); a flag of the other tool, a value that does not parse or a rule between flags that fails ends in one line
    naming the flag, exit code 2, not a traceback. parsed() runs once the flags are parsed, before main."""
    own, others = TOOL_FLAGS[tool]
    for name in own:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])

    def parse(argv):
        try:
            arguments = FLAGS(argv)
        except flags.Error as error:
            print('error: %s' % error, file=sys.stderr)
            sys.exit(2)
        except SystemExit as help_shown:  # absl's --help and --helpfull exit 1
            sys.exit(0 if help_shown.code == 1 else help_shown.code)
        strangers = [name for name in others if FLAGS[name].present]
        if strangers:
            print('error: %s: not a flag of %s (see python %s --help)' % (
                ', '.join('--' + name for name in strangers), tool, tool), file=sys.stderr)
            sys.exit(2)
        parsed()
        return arguments

    app.run(main, flags_parser=parse)


def cpu_has_bf16():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            return any(flag in cpuinfo.read() for flag in ('avx512_bf16', 'amx_bf16'))
    except OSError:
        return False


CGROUP_MEMORY = (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),  # v2: limit, use
                 ('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory/memory.usage_in_bytes'))


def memory_available():
    """(bytes, whence) this process can still take: the least of its cgroup's limit less its use, and the memory
    the machine has available (MemAvailable)."""
    figures = []
    for limit, use in CGROUP_MEMORY:
        try:
            with open(limit) as limit_file, open(use) as use_file:
                figures.append((int(limit_file.read()) - int(use_file.read()), 'its memory limit (cgroup)'))
        except (OSError, ValueError):  # no such cgroup, or no limit ('max')
            pass
    try:
        with open('/proc/meminfo') as meminfo:
            kilobytes = re.search(r'MemAvailable:\s*(\d+) kB', meminfo.read())
        figures.append((int(kilobytes.group(1)) * 1024, 'its available memory'))
    except (OSError, AttributeError):
        pass
    return min(figures) if figures else (math.inf, 'no figure')


def lr_boundaries():
    """--lr_boundaries as step numbers (their validator has made sure they are)."""
    return [int(boundary) for boundary in FLAGS.lr_boundaries]


def step_limit():
    """The step training stops at (0: none): --max_steps, which a time budget (--max_minutes) replaces unless given."""
    return FLAGS.max_steps if FLAGS['max_steps'].present or not FLAGS.max_minutes else 0


def fitted_schedule():
    """Whether the cosine schedule's end follows the clock (--max_minutes, no --decay_steps)."""
    return bool(FLAGS.max_minutes) and FLAGS.lr_schedule == 'cosine' and not FLAGS['decay_steps'].present


def decay_steps():
    """The schedule's --decay_steps, except that a cosine schedule ends at the step limit unless --decay_steps is
    given (with a time budget, this is where it starts: the training moves it)."""
    if FLAGS.lr_schedule == 'cosine' and step_limit() and not FLAGS['decay_steps'].present:
        return step_limit()
    return FLAGS.decay_steps


def warmup_steps():
    """--warmup_steps, except that the default warm-up takes at most a tenth of a training's step limit."""
    if step_limit() and not FLAGS['warmup_steps'].present:
        return min(FLAGS.warmup_steps, step_limit() // 10)
    return FLAGS.warmup_steps


def warn_about_schedule():
    """A cosine schedule that ends before training does, or a warm-up that outlasts it, warns."""
    if FLAGS.lr_schedule == 'cosine' and decay_steps() < (step_limit() or math.inf) and not fitted_schedule():
        log.warning('warning: --lr_schedule=cosine reaches a learning rate of 0 at step %d (--decay_steps), before '
                    'training ends (--max_steps=%d%s): the steps after it learn nothing', decay_steps(),
                    step_limit(), '' if step_limit() else ', no limit')
    if step_limit() and warmup_steps() >= step_limit():
        log.warning('warning: --warmup_steps=%d is not shorter than --max_steps=%d: the learning rate never reaches '
                    '--initial_learning_rate=%g', warmup_steps(), step_limit(), FLAGS.initial_learning_rate)


# --- the architecture ---------------------------------------------------------

# The model's shape, as saved beside its checkpoint in architecture.json; its fields are flags of the same names.
Architecture = collections.namedtuple('Architecture', [
    'image_height', 'image_width', 'image_channel', 'charset', 'cnn_count', 'out_channels', 'num_hidden',
    'leakiness', 'max_stepsize', 'rnn_cell', 'rnn_layers', 'bidirectional', 'rhn_depth'])


def architecture_from_flags():
    return Architecture(**{name: getattr(FLAGS, name) for name in Architecture._fields})


def input_shape(arch):
    """The [height, width, channels] images of an architecture are resized to."""
    return arch.image_height, arch.image_width, arch.image_channel


def check_architecture(arch, source):
    """A saved architecture (source: its file) that cannot be built: a value of the wrong type or one its flag
    refuses, named by file and field."""
    for name in Architecture._fields:
        flag, value = FLAGS[name], getattr(arch, name)
        expected = type(flag.default)
        where = '%s: %s=%s' % (source, name, json.dumps(value))
        if type(value) is not expected and not (expected is float and type(value) is int):
            raise UserError('%s: must be %s' % (where, {int: 'a whole number', float: 'a number', str: 'a string',
                                                        bool: 'true or false'}[expected]))
        if getattr(flag.parser, 'is_outside_bounds', lambda value: False)(value):
            raise UserError('%s: must be %s' % (where, flag.parser.syntactic_help))
        if isinstance(flag.parser, flags.EnumParser) and value not in flag.parser.enum_values:
            raise UserError('%s: must be one of %s' % (where, ', '.join(flag.parser.enum_values)))
        for validator in flag.validators:
            if validator.get_flags_names() == [name] and not validator.checker(value):
                raise UserError('%s: %s' % (where, validator.message))
    if arch.max_stepsize > arch.image_width:
        raise UserError('%s: max_stepsize=%d: must be between 0 and image_width=%d' % (
            source, arch.max_stepsize, arch.image_width))
    Charset(arch.charset)


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
        unknown = sorted(set(self.cluster) - set(CLUSTER_JOBS))
        if unknown or self.job not in CLUSTER_JOBS:
            raise UserError('%s: job %s: main.py runs the tasks chief, worker and ps' % (
                source, ', '.join(unknown) or repr(self.job)))
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


def check_port_free(task):
    """A port of this task already in use on this machine is a UserError (gRPC would share it silently)."""
    port = int(task.address.rpartition(':')[2])
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(('', port))
        except OSError as error:
            raise UserError('%s: port %d is in use on this machine (%s)' % (task, port, error.strerror))


def wait_for_ps_tasks(task, timeout):
    """Waits up to timeout seconds for every ps task to accept connections; a UserError names the first that does
    not."""
    deadline = time.time() + timeout
    for index, address in enumerate(task.cluster['ps']):
        host, _, port = address.rpartition(':')
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
                break
            except OSError as error:
                if time.time() > deadline:
                    raise UserError('%s: ps task %d at %s cannot be reached after --cluster_timeout=%d s (%s): is it '
                                    'started, and is its address right?' % (task, index, address, timeout, error))
                time.sleep(0.5)


@contextlib.contextmanager
def watchdog(seconds, silent, doing):
    """Bounds a wait that TensorFlow's runtime leaves without a deadline (a session's creation waits forever for a
    frozen task, or for an address that is no TensorFlow server): after `seconds`, silent(doing, seconds)."""
    timer = threading.Timer(seconds, silent, (doing, seconds))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# --- files -------------------------------------------------------------------

def printable_name(name):
    r"""A file name as result files and messages write it, on one line and without a tab: a backslash, tab, newline
    and carriage return as \\ \t \n \r, and bytes that are not UTF-8 as \xNN."""
    raw = os.fsencode(name)
    escaped = raw.replace(b'\\', b'\\\\').replace(b'\t', b'\\t').replace(b'\n', b'\\n').replace(b'\r', b'\\r')
    return escaped.decode('utf-8', 'backslashreplace')


@contextlib.contextmanager
def atomic_file(path):
    """An open text file that appears at path whole when the block ends, or not at all: a temporary file in the same
    folder, then a rename over path. The file keeps the mode of the one it replaces, a new one gets the umask's; a
    link's target is written, the link kept."""
    path = os.path.realpath(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    with tempfile.NamedTemporaryFile('w', encoding='utf-8', dir=os.path.dirname(path), delete=False,
                                     prefix='.%s.' % os.path.basename(path), suffix='.tmp') as file:
        try:
            yield file
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
            os.replace(file.name, path)
        except BaseException:
            os.remove(file.name)
            raise


def write_atomically(path, text):
    with atomic_file(path) as file:
        file.write(text)


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(directory, where):
    """A folder to write into, made when needed: refused, naming `where` (the flag at fault), when it is not a
    folder, or cannot be made because a folder above it is a file, or this user may not write there. Makes nothing."""
    existing = nearest_existing(directory)
    if not os.path.isdir(existing):
        raise UserError('%s: %s is a file, not a folder' % (where, existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError('%s: no permission to %s %s' % (
            where, 'write in' if existing == os.path.abspath(directory) else 'create folders in', existing))


def nearest_existing(path):
    """The path, or the nearest folder above it that exists."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    return existing


def read_record(path):
    """The content of a JSON record file (architecture.json, best.json, model.json, cluster.json), or None where
    there is none; one that cannot be read or parsed is a UserError naming it."""
    try:
        with open(path, encoding='utf-8') as file:
            return json.load(file)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UserError('%s cannot be read (%s)' % (path, error.strerror))
    except ValueError as error:
        raise UserError('%s is damaged: not a JSON record (%s)' % (path, error))


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
        """The folder must exist and take a new file."""
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise UserError('%s: no such folder %s' % (self.flag, folder))
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise UserError('%s cannot be written (no write permission)' % self.flag)
        check_writable(folder, self.flag)

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

class TrainingClock:
    """Where a training stands against its limits: the step limit and the time budget (seconds, 0: none), counted
    from the first step. The step rate is measured from the end of the first step (which builds TensorFlow's
    kernels) and includes the validations and saves; the longest of those (`pause`) is kept in reserve for the
    final save and validation, so that the training ends within its budget. recent_rate gives the log lines this
    process's own steps a second. `clock` gives seconds (tests pass their own)."""

    MEASURED_STEPS = 20  # steps after the first before the rate is trusted

    def __init__(self, budget, step_limit, clock=time.monotonic):
        self.budget, self.step_limit, self.clock = budget, step_limit, clock
        self.start, self.first = clock(), None
        self.pause = 0.0
        self.since, self.runs = clock(), 0  # this process's steps since the last log line or pause

    def stepped(self, step):
        """Records a step done (the first one starts the rate's measurement)."""
        if self.first is None:
            self.first = (self.clock(), step)
        self.runs += 1

    def paused(self, seconds):
        """A validation or save took seconds (the longest is the reserve); recent_rate restarts after it."""
        self.pause = max(self.pause, seconds)
        self.since, self.runs = self.clock(), 0

    def recent_rate(self):
        """Steps a second that this process ran since the last call or pause (the training steps only)."""
        now = self.clock()
        rate = self.runs / max(1e-9, now - self.since)
        self.since, self.runs = now, 0
        return rate

    def rate(self, step):
        """Steps a second since the first, or None until MEASURED_STEPS have run."""
        if self.first is None or step - self.first[1] < self.MEASURED_STEPS:
            return None
        return (step - self.first[1]) / max(1e-9, self.clock() - self.first[0])

    def seconds_left(self, step):
        """Seconds until the budget (less the reserve for the final save) or the step limit ends the training,
        whichever comes first; None when neither is known."""
        left = [self.budget - (self.clock() - self.start) - self.pause] if self.budget else []
        if self.step_limit and self.rate(step):
            left.append((self.step_limit - step) / self.rate(step))
        return max(0.0, min(left)) if left else None

    def end_step(self, step):
        """The step the training will end at at the rate so far, or None until the rate is known."""
        rate, left = self.rate(step), self.seconds_left(step)
        return None if rate is None or left is None else step + int(rate * left)

    def limits(self):
        """What ends the training besides its epochs: `step 4000`, `20 min have passed (--max_minutes)`."""
        return (['step %d' % self.step_limit] if self.step_limit else []) + (
            ['%s have passed (--max_minutes)' % Progress.duration(self.budget)] if self.budget else [])

    def over(self, step):
        """Whether the budget is spent (the step limit is the loop's own test)."""
        return bool(self.budget) and self.clock() - self.start + self.pause >= self.budget

    def text(self, step):
        """`3 min in, 17 min left`."""
        left = self.seconds_left(step)
        return '%s in%s' % (Progress.duration(self.clock() - self.start),
                            '' if left is None else ', %s left' % Progress.duration(left))


# --- the model folder ----------------------------------------------------------

class ModelFolder:
    """All that a checkpoint_dir (or an export) holds: architecture.json; the rolling checkpoints `ocr-model-<step>`
    (an export: `ocr-model`); best/ with the best validated model and best.json (its step, accuracy and CER);
    model.json, the record an export keeps; cluster.json, the cluster that trained it; training.lock, which a
    training holds; and what a killed training leaves behind."""
    ARCHITECTURE = 'architecture.json'
    CHECKPOINT_PREFIX = 'ocr-model'
    BEST = 'best'
    BEST_RECORD = 'best.json'
    EXPORT_RECORD = 'model.json'
    CLUSTER = 'cluster.json'
    LOCK = 'training.lock'
    IN_USE = '--checkpoint_dir=%s is in use by another training (%s): wait for it to end, or choose another ' \
        '--checkpoint_dir'
    LEFTOVERS = re.compile(r'.*\.tempstate\d*|.*\.meta\.tmp.*|checkpoint\.tmp.*|\..*\.tmp|.*_temp')

    def __init__(self, directory):
        self.directory = directory
        self.best_dir = os.path.join(directory, self.BEST)
        self.checkpoint_prefix = os.path.join(directory, self.CHECKPOINT_PREFIX)
        self.held = False  # whether this process holds the folder's lock

    def path(self, name):
        return os.path.join(self.directory, name)

    def architecture(self):
        """The saved Architecture, or None when there is none."""
        path = self.path(self.ARCHITECTURE)
        record = read_record(path)
        if record is None:
            return None
        try:
            arch = Architecture(**record)
        except TypeError as error:
            raise UserError('%s is not a valid architecture file of this version (%s)' % (path, error))
        check_architecture(arch, path)
        return arch

    def save_architecture(self, arch):
        os.makedirs(self.directory, exist_ok=True)
        self.save_record(self.ARCHITECTURE, arch._asdict())

    def save_record(self, name, record):
        write_atomically(self.path(name), json.dumps(record, indent=2) + '\n')

    def steps(self, folder):
        """{step: checkpoint path} of the complete checkpoints (index written) in a folder."""
        names = os.listdir(folder) if os.path.isdir(folder) else []
        found = [re.fullmatch(r'%s-(\d+)\.index' % self.CHECKPOINT_PREFIX, name) for name in names]
        return {int(match.group(1)): os.path.join(folder, match.group(0)[:-len('.index')])
                for match in found if match}

    def newest_rolling(self):
        """The newest rolling checkpoint (an export's one checkpoint), or None."""
        steps = self.steps(self.directory)
        if steps:
            return steps[max(steps)]
        return self.checkpoint_prefix if os.path.isfile(self.checkpoint_prefix + '.index') else None

    def best(self):
        """The best validated checkpoint and its record {step, accuracy, cer}, or (None, None). best.json names
        it; without a readable best.json, the newest checkpoint of best/ is used, its accuracy unknown."""
        steps = self.steps(self.best_dir)
        if not steps:
            return None, None
        record_path = os.path.join(self.best_dir, self.BEST_RECORD)
        try:
            record = read_record(record_path) or {}
            record = {'step': int(record['step']), 'accuracy': float(record['accuracy']), 'cer': float(record['cer'])}
            if record['step'] in steps:
                return steps[record['step']], record
            problem = 'its checkpoint of step %d is missing' % record['step']
        except (UserError, ValueError, KeyError, TypeError) as error:
            problem = error
        path = steps[max(steps)]
        log.warning('warning: %s is missing or damaged (%s); %s is used, its accuracy unknown', record_path,
                    problem, path)
        return path, {'step': max(steps), 'accuracy': -1.0, 'cer': float('inf')}

    def newest(self):
        """The newest checkpoint of the folder, rolling or best (a training killed between a validation and the
        next save has only its best): a checkpoint and its record (None for a rolling one), or (None, None)."""
        latest, (best, record) = self.newest_rolling(), self.best()
        if best and (latest is None or record['step'] >= checkpoint_step(latest)):
            return best, record
        return latest, None

    def holds_model(self):
        return bool(self.newest()[0])

    def chosen(self, which):
        """The checkpoint --checkpoint chooses and its record: the best validated one (`best`; the newest when none
        was validated) or the newest (`latest`); (None, None) when there is none."""
        best, record = self.best()
        return (best, record) if which == 'best' and best else self.newest()

    def save_best_record(self, record):
        """Writes best.json, which makes its step's checkpoint the best, then removes the other checkpoints of
        best/ (a training killed between the two leaves them for remove_leftovers)."""
        write_atomically(os.path.join(self.best_dir, self.BEST_RECORD), json.dumps(record, indent=2))
        self.remove_superseded()

    def remove_superseded(self):
        """Removes the files of the checkpoints of best/ that best.json does not name; returns their names."""
        best, record = self.best()
        keep = os.path.basename(best) + '.' if best and record['accuracy'] >= 0 else None
        removed = []
        for name in os.listdir(self.best_dir) if keep else []:
            if name.startswith(self.CHECKPOINT_PREFIX + '-') and not name.startswith(keep):
                os.remove(os.path.join(self.best_dir, name))
                removed.append(os.path.join(self.BEST, name))
        return removed

    def remove_model(self):
        """Removes the model a training is about to replace (--overwrite): its checkpoints, best/ and records."""
        for name in os.listdir(self.directory):
            if name.startswith(self.CHECKPOINT_PREFIX) or name in (self.BEST, self.ARCHITECTURE, self.CLUSTER,
                                                                  self.EXPORT_RECORD, 'checkpoint'):
                remove_path(self.path(name))
        log.info('removed the model in %s (--overwrite)', self.directory)

    def check_not_in_use(self):
        """A folder a live training holds is a UserError that names the holder (checked before a training starts)."""
        holder = self.holder()
        if holder:
            raise UserError(self.IN_USE % (self.directory, holder))

    def holder(self):
        """What holds the folder for a training ('process PID on HOST'), or None: no training, or this process."""
        if self.held or not os.path.lexists(self.path(self.LOCK)):
            return None
        with self.open_lock('r') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return lock.read().strip() or 'starting'
        return None

    @contextlib.contextmanager
    def locked(self):
        """Holds the folder for one training: an OS lock (flock) on training.lock, which names its holder for the
        messages. The OS lets it go when the process ends, however it ends: there is no stale lock to take over."""
        os.makedirs(self.directory, exist_ok=True)
        with self.open_lock('a+') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                raise UserError(self.IN_USE % (self.directory, lock.read().strip() or 'starting'))
            lock.truncate(0)
            lock.write('process %d on %s\n' % (os.getpid(), socket.gethostname()))
            lock.flush()
            self.held = True
            try:
                yield
            finally:
                self.held = False

    def open_lock(self, mode):
        try:
            return open(self.path(self.LOCK), mode)
        except OSError as error:
            raise UserError('%s cannot be opened as a lock file (%s)' % (self.path(self.LOCK), error.strerror))

    def check_not_output(self, path, where):
        """An output (infer's readings, an export) in this folder or its best/, or a link to one of their files,
        is a UserError naming it: it would write over the model being read."""
        folders = [os.path.realpath(folder) for folder in (self.directory, self.best_dir)]
        real = os.path.realpath(path)
        files = [os.path.join(folder, name) for folder in folders if os.path.isdir(folder)
                 for name in os.listdir(folder)]
        if real in folders or os.path.dirname(real) in folders or os.path.isfile(path) and any(
                os.path.samefile(path, name) for name in files):
            raise UserError('%s is in, or a link into, %s, the model being read: write outside it' % (
                where, self.directory))


def remove_leftovers(model_folder):
    """Removes what a killed training leaves in a ModelFolder: partly written files (TensorFlow's .tempstate,
    .meta.tmp and checkpoint.tmp, this tool's .tmp) and the data files of checkpoints whose index was never
    written."""
    removed = []
    for directory in (model_folder.directory, model_folder.best_dir):
        names = os.listdir(directory) if os.path.isdir(directory) else []
        for name in names:
            orphan = re.fullmatch(r'(%s-\d+)\.data-\d+-of-\d+' % ModelFolder.CHECKPOINT_PREFIX, name)
            if ModelFolder.LEFTOVERS.fullmatch(name) or (orphan and orphan.group(1) + '.index' not in names):
                remove_path(os.path.join(directory, name))
                removed.append(os.path.relpath(os.path.join(directory, name), model_folder.directory))
    removed += model_folder.remove_superseded()
    if removed:
        log.warning('warning: removed what an interrupted training left in %s: %s', model_folder.directory,
                    ', '.join(shorten(removed)))


def checkpoint_step(path):
    """The step of a rolling checkpoint's path, 0 for an export's."""
    match = re.search(r'-(\d+)$', path)
    return int(match.group(1)) if match else 0


def remove_path(path):
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def folder_size(directory):
    """The bytes of every file in a folder and the folders below it."""
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(directory)
               for name in names)


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


def read_image(path, height, width, channels):
    """One image file -> (uint8 [height, width, channels], ok). An unreadable file gives zeros and ok=False."""
    path = os.fsdecode(path)
    data = np.fromfile(path, dtype=np.uint8) if os.path.isfile(path) else np.zeros(0, np.uint8)
    # JPEG: decoded as OpenCV does by default, turned by its EXIF orientation; others (PNG, BMP...) as stored,
    # alpha and depth included, for opaque_uint8.
    jpeg = data[:2].tobytes() == b'\xff\xd8'
    decoding = (cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR) if jpeg else cv2.IMREAD_UNCHANGED
    try:  # OpenCV refuses an image larger than MAX_IMAGE_PIXELS from its header, before it decodes
        image, too_large = cv2.imdecode(data, decoding) if data.size else None, False
    except cv2.error as error:
        image, too_large = None, 'validateInputImageSize' in str(error)
    if image is None:
        log.warning('warning: cannot read image %s%s', printable_name(path),
                    ' (over %d pixels: larger images are not read)' % MAX_IMAGE_PIXELS if too_large else '')
        return np.zeros((height, width, channels), np.uint8), False
    image = opaque_uint8(image)
    if channels == 1 and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif channels == 3 and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    interpolation = cv2.INTER_AREA if image.shape[0] > height or image.shape[1] > width else cv2.INTER_LINEAR
    image = cv2.resize(image, (width, height), interpolation=interpolation)
    return image.reshape(height, width, channels), True


class LabelledImages:
    """The images of a data set by number: paths and labels held in Python, each image decoded when asked for.

    When all the decoded images fit in cache_bytes they are kept after their first reading, so that later epochs
    and validations read no file; label_ids are the charset classes of each label padded with -1. An image found
    unreadable is not read (nor warned about) again; once every image is, reading raises NO_READABLE_IMAGES.
    """

    def __init__(self, paths, labels, charset, shape, cache_bytes=CACHE_BYTES):
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

_ARITHMETIC = re.compile(r'[0-9+\-*()]{1,500}')  # longer is not a text line; deep trees would hit the stack
_OPERATIONS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def expression_value(text):
    """Value of an arithmetic expression of integers (leading zeros allowed), + - * and parentheses, of at most 500
    characters; else None.

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

