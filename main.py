"""Command-line entry: `python main.py --mode=train|val|infer`.

train: reads train_dir, validates on val_dir, saves checkpoints and the model architecture to checkpoint_dir.
val: restores the model from checkpoint_dir and measures it on val_dir.
infer: restores it and writes the reading of every image of infer_dir to infer_output.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time

import utils  # first: it quiets TensorFlow's and OpenCV's start-up messages
import cv2
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import cnn_lstm_otc_ocr as ocr
from utils import FLAGS, UserError, log

v1 = tf.compat.v1

ARCHITECTURE_FILE = 'architecture.json'
CHECKPOINT_PREFIX = 'ocr-model'
BEST_DIR = 'best'
BEST_FILE = 'best.json'
EXPORT_RECORD_FILE = 'model.json'
LOCK_FILE = 'training.lock'
CLUSTER_FILE = 'cluster.json'
# The contest model that ships with the tool (README: the shipped model), used while ./checkpoint/ is empty.
SHIPPED_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imgs', 'model')
LOG_EVERY_STEPS = 10
SAMPLES_SHOWN = 5
COVERAGE_THRESHOLDS = (0.0, 0.5, 0.9, 0.99, 0.999)


# --- flags, devices and the architecture ---------------------------------------

def check_flags():
    """Flags whose values cannot work, each named with its value."""
    if FLAGS.mode not in ('train', 'val', 'infer', 'export'):
        raise UserError('--mode=%s: main.py runs train, val, infer or export' % FLAGS.mode)
    utils.check_numeric_flags()


def check_architecture(arch):
    for name in ('image_height', 'image_width', 'cnn_count', 'out_channels', 'num_hidden', 'rnn_layers',
                 'rhn_depth'):
        if getattr(arch, name) < 1:
            raise UserError('--%s=%s: must be at least 1' % (name, getattr(arch, name)))
    if arch.image_channel not in (1, 3):
        raise UserError('--image_channel=%s: must be 1 (grey) or 3 (colour)' % arch.image_channel)
    if not 0 <= arch.max_stepsize <= arch.image_width:
        raise UserError('--max_stepsize=%s: must be between 0 and --image_width=%s' % (
            arch.max_stepsize, arch.image_width))
    utils.Charset(arch.charset)


def tower_devices():
    """One device per tower: ['/cpu:0'] for --num_gpus=0, the first N GPUs for N (N logical CPUs with
    --tower_device=cpu); GPUs that are not there are an error, never a fallback."""
    if FLAGS.num_gpus == 0:
        return ['/cpu:0']
    if FLAGS.tower_device == 'gpu':
        visible = tf.config.list_physical_devices('GPU')
        if FLAGS.num_gpus > len(visible):
            raise UserError('--num_gpus=%d but %d GPU(s) are visible: %s (--tower_device=cpu runs the towers on '
                            'logical CPU devices)' % (FLAGS.num_gpus, len(visible),
                                                      ', '.join(d.name for d in visible) or 'none'))
    return ['/%s:%d' % (FLAGS.tower_device, index) for index in range(FLAGS.num_gpus)]


def training_towers(task=None):
    """The tower devices of training, between which --batch_size must split evenly; in a cluster, those of this
    worker task."""
    devices = tower_devices()
    if FLAGS.batch_size % len(devices):
        raise UserError('--batch_size=%d does not split evenly between --num_gpus=%d towers: use a multiple of %d'
                        % (FLAGS.batch_size, FLAGS.num_gpus, FLAGS.num_gpus))
    return [task.device + device for device in devices] if task else devices


def model_device():
    """Where val and infer run, whatever the number of towers: the first tower's device."""
    return tower_devices()[0]


def architecture_from_flags():
    return ocr.Architecture(**{name: getattr(FLAGS, name) for name in ocr.Architecture._fields})


def load_architecture(directory):
    """The architecture saved in a model folder, or None when there is none."""
    path = os.path.join(directory, ARCHITECTURE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            saved = json.load(file)
        return ocr.Architecture(**saved)
    except (ValueError, TypeError) as error:
        raise UserError('%s is not a valid architecture file of this version (%s)' % (path, error))


def save_architecture(arch, directory):
    os.makedirs(directory, exist_ok=True)
    utils.write_atomically(os.path.join(directory, ARCHITECTURE_FILE), json.dumps(arch._asdict(), indent=2) + '\n')


def resolve_architecture(saved, directory):
    """The saved architecture where there is one (a flag given on the command line must agree), else the flags."""
    if saved is None:
        arch = architecture_from_flags()
    else:
        conflicts = ['--%s=%r but the model in %s has %s=%r' % (
            name, getattr(FLAGS, name), directory, name, getattr(saved, name))
            for name in ocr.Architecture._fields
            if FLAGS[name].present and getattr(FLAGS, name) != getattr(saved, name)]
        if conflicts:
            raise UserError('\n  '.join(['flags contradict the saved model:'] + conflicts))
        arch = saved
    check_architecture(arch)
    return arch


def latest_checkpoint(directory):
    """The newest rolling checkpoint of a model folder, or None."""
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None


def best_dir(directory):
    return os.path.join(directory, BEST_DIR)


def best_checkpoint(directory):
    """The best validated model of a model folder and its record {step, accuracy, cer}, or (None, None)."""
    path = tf.train.latest_checkpoint(best_dir(directory)) if os.path.isdir(best_dir(directory)) else None
    if path is None:
        return None, None
    record_path = os.path.join(best_dir(directory), BEST_FILE)
    try:
        with open(record_path) as file:
            record = json.load(file)
        return path, {'step': int(record['step']), 'accuracy': float(record['accuracy']), 'cer': float(record['cer'])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning('warning: %s is missing or damaged (%s); its checkpoint %s is used, its accuracy unknown',
                    record_path, error, path)
        step = re.search(r'-(\d+)$', path)
        return path, {'step': int(step.group(1)) if step else -1, 'accuracy': -1.0, 'cer': float('inf')}


def model_dir():
    """The model folder of val, infer and export: --checkpoint_dir, or the shipped model while that flag is left
    at its default and the default folder holds no model yet."""
    directory = FLAGS.checkpoint_dir
    if FLAGS['checkpoint_dir'].present or latest_checkpoint(directory) or best_checkpoint(directory)[0]:
        return directory
    log.info('no model in %s yet: using the shipped contest model in %s (--checkpoint_dir chooses another)',
             directory, SHIPPED_MODEL_DIR)
    return SHIPPED_MODEL_DIR


def restore_model(directory):
    """Architecture, checkpoint and validation record (None for a checkpoint that is not the best) of the model of
    a folder that --checkpoint chooses; no model there is an error."""
    best, record = best_checkpoint(directory)
    latest = latest_checkpoint(directory)
    if FLAGS.checkpoint == 'best' and best:
        log.info('using the best validated model: step %d, accuracy %.4f, CER %.4f',
                 record['step'], record['accuracy'], record['cer'])
        checkpoint = best
    elif FLAGS.checkpoint == 'best' and FLAGS['checkpoint'].present:
        raise UserError('--checkpoint=best: no validated model in %s' % best_dir(directory))
    else:
        checkpoint, record = latest, None
    if checkpoint is None:
        raise UserError('no checkpoint in --checkpoint_dir=%s: train a model first (--mode=train) '
                        'or point --checkpoint_dir at one' % directory)
    saved = load_architecture(directory)
    if saved is None:
        log.warning('warning: %s has no %s; building the model from the flags', directory, ARCHITECTURE_FILE)
    return resolve_architecture(saved, directory), checkpoint, record


def check_schedule():
    """Learning-rate schedule flags that cannot work."""
    if FLAGS.lr_schedule != 'piecewise':
        return
    if not FLAGS.lr_boundaries:
        raise UserError('--lr_schedule=piecewise needs --lr_boundaries, e.g. --lr_boundaries=20000,40000')
    if [int(b) for b in FLAGS.lr_boundaries] != sorted(set(int(b) for b in FLAGS.lr_boundaries)):
        raise UserError('--lr_boundaries=%s: must be increasing step numbers' % ','.join(FLAGS.lr_boundaries))


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


def session_config():
    """Soft placement for ops without a GPU kernel, --num_gpus logical CPU devices for --tower_device=cpu, and the
    mixed-precision graph rewrite of --precision."""
    config = v1.ConfigProto(allow_soft_placement=True)
    if FLAGS.tower_device == 'cpu' and FLAGS.num_gpus > 1:
        config.device_count['CPU'] = FLAGS.num_gpus
    rewrites = config.graph_options.rewrite_options
    if FLAGS.precision == 'bf16':
        rewrites.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    elif FLAGS.precision == 'fp16':
        rewrites.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    return config


# --- reading -------------------------------------------------------------------

def build_reader(arch, dataset, mode):
    """A reading graph (mode 'val' or 'infer') over a dataset: its iterator's initializer and the tensors to fetch."""
    iterator = v1.data.make_initializable_iterator(dataset)
    batch = iterator.get_next()
    with tf.device(model_device()):
        decoded, confidence = ocr.reading_graph(arch, batch['images'], FLAGS.decoder, FLAGS.beam_width, mode)
    return iterator.initializer, {'decoded': decoded, 'confidence': confidence, 'labels': batch['labels'],
                                  'paths': batch['paths'], 'ok': batch['ok']}


def read_all(session, reader, charset, on_batch=None):
    """Runs a reader over its whole dataset: lists of predictions, confidences, labels, paths and readable
    flags."""
    initializer, fetches = reader
    session.run(initializer)
    results = {'predictions': [], 'confidence': [], 'labels': [], 'paths': [], 'ok': []}
    while True:
        try:
            batch = session.run(fetches)
        except tf.errors.OutOfRangeError:
            return results
        results['predictions'] += [charset.decode(row) for row in batch['decoded']]
        results['confidence'] += [float(value) for value in batch['confidence']]
        results['labels'] += [label.decode() for label in batch['labels']]
        results['paths'] += [os.fsdecode(path) for path in batch['paths']]
        results['ok'] += list(batch['ok'])
        if on_batch:
            on_batch(len(results['paths']))


def report_validation(results, step=None):
    """Logs accuracy, CER and a few predictions (wrong ones first); returns (accuracy, cer)."""
    predictions, labels = results['predictions'], results['labels']
    accuracy, cer = utils.accuracy_and_cer(predictions, labels)
    where = 'step %d: ' % step if step is not None else ''
    log.info('%svalidation accuracy %.4f, CER %.4f on %d images', where, accuracy, cer, len(labels))
    order = sorted(range(len(labels)), key=lambda i: predictions[i] == labels[i])
    for i in order[:SAMPLES_SHOWN]:
        log.info('  %-30s label %-12s read %-12s %s', utils.printable_name(os.path.basename(results['paths'][i])),
                 labels[i],
                 predictions[i], 'ok' if predictions[i] == labels[i] else 'WRONG')
    if not any(predictions):
        log.info('  every reading is empty: normal early in CTC training (the blank is learnt first); if it lasts '
                 'thousands of steps, try another --initial_learning_rate and check that file names match images')
    return accuracy, cer


def report_coverage(results, thresholds=COVERAGE_THRESHOLDS):
    """Logs, for each confidence threshold, the share of images read at or above it and the accuracy on them:
    what a user needs to decide below which confidence a person should look at the image."""
    log.info('confidence  coverage  accuracy (of the images at or above the confidence)')
    for threshold in thresholds:
        kept = [p == t for p, t, c in zip(results['predictions'], results['labels'], results['confidence'])
                if c >= threshold]
        log.info('  >= %-6s   %6.2f%%   %s', threshold, 100 * len(kept) / max(1, len(results['labels'])),
                 '%6.2f%%' % (100 * sum(kept) / len(kept)) if kept else '     -')


def labelled_set(directory, flag_name, arch, charset, batch_size, shard=(0, 1), **options):
    """A folder's labelled images as batches, and their count; shard (index, count): every count-th image from
    the index-th, a cluster worker's share."""
    paths, labels = utils.list_labelled_images(directory, flag_name, charset, ocr.time_steps(arch))
    index, count = shard
    if len(paths) < count:
        raise UserError('--%s=%s holds %d images, fewer than the %d workers of the cluster' % (
            flag_name, directory, len(paths), count))
    paths, labels = paths[index::count], labels[index::count]
    shape = (arch.image_height, arch.image_width, arch.image_channel)
    return utils.image_dataset(paths, labels, charset, batch_size, shape, **options), len(paths)


# --- training ------------------------------------------------------------------

def hyperparameters():
    return ocr.Hyperparameters(
        optimizer=FLAGS.optimizer, initial_learning_rate=FLAGS.initial_learning_rate, lr_schedule=FLAGS.lr_schedule,
        decay_steps=FLAGS.decay_steps, decay_rate=FLAGS.decay_rate,
        lr_boundaries=[int(b) for b in FLAGS.lr_boundaries], warmup_steps=FLAGS.warmup_steps, beta1=FLAGS.beta1,
        beta2=FLAGS.beta2, momentum=FLAGS.momentum, keep_prob=FLAGS.output_keep_prob, clip_norm=FLAGS.clip_norm,
        loss_scaling=FLAGS.precision == 'fp16')


def stop_on_ctrl_c():
    """A list that Ctrl-C appends to, so that training stops after the step in progress and saves; a second
    Ctrl-C interrupts at once. (An exception raised in the middle of a session run can leave its input pipeline
    waiting forever.)"""
    requested = []

    def request_stop(signum, frame):
        requested.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, request_stop)
    return requested


def check_finite(step, fetched):
    """A non-finite loss stops training before anything is saved, naming the images whose loss it was."""
    if np.isfinite(fetched['loss']):
        return
    bad = [utils.printable_name(os.path.basename(path)) for path, loss in zip(fetched['paths'], fetched['losses'])
           if not np.isfinite(loss)]
    raise UserError('step %d: the loss is %s; images of the batch without a finite CTC loss (no valid path, or '
                    'diverged weights): %s. Stopped without saving; --restore continues from the last '
                    'checkpoint, perhaps with a lower --initial_learning_rate' % (
                        step, fetched['loss'], ', '.join(utils.shorten(bad))))


def init_model(directory):
    """Architecture and checkpoint of the model folder --init_from names (its best validated model, else its
    latest checkpoint); a folder's best/ finds the architecture in the folder above."""
    if not os.path.isdir(directory):
        raise UserError('--init_from=%s: no such folder' % directory)
    checkpoint = best_checkpoint(directory)[0] or latest_checkpoint(directory)
    if checkpoint is None:
        raise UserError('--init_from=%s holds no model checkpoint' % directory)
    saved = load_architecture(directory) or load_architecture(os.path.dirname(os.path.normpath(directory)))
    if saved is None:
        raise UserError('--init_from=%s has no %s: its architecture is unknown' % (directory, ARCHITECTURE_FILE))
    return resolve_architecture(saved, directory), checkpoint


def check_fits(checkpoint, variables, context):
    """A checkpoint that lacks a variable of the graph, or holds one in another shape, is a UserError that lists
    the differences (say a num_hidden edited in architecture.json), instead of TensorFlow's restore error."""
    saved = dict(tf.train.list_variables(checkpoint))
    problems = ['%s: not in the checkpoint' % v.op.name for v in variables if v.op.name not in saved]
    problems += ['%s: %s here, %s in the checkpoint' % (v.op.name, v.shape.as_list(), saved[v.op.name])
                 for v in variables if v.op.name in saved and v.shape.as_list() != list(saved[v.op.name])]
    if problems:
        raise UserError('%s: %s does not fit the model built %s (%d differences):\n  %s' % (
            checkpoint, os.path.basename(checkpoint), context, len(problems), '\n  '.join(utils.shorten(problems))))


def restore(session, checkpoint, directory):
    """Restores every variable of the graph from a model folder's checkpoint, after check_fits."""
    context = ('from the flags, as %s has no %s: give the flags it was trained with' % (directory, ARCHITECTURE_FILE)
               if load_architecture(directory) is None else 'from %s' % os.path.join(directory, ARCHITECTURE_FILE))
    check_fits(checkpoint, v1.global_variables(), context)
    v1.train.Saver().restore(session, checkpoint)


def initialise_from(session, checkpoint):
    """Loads the model's weights and batch-norm statistics from a checkpoint (not its optimiser state or step)."""
    wanted = v1.trainable_variables() + [v for v in v1.global_variables() if 'moving_' in v.op.name]
    check_fits(checkpoint, wanted, 'for --init_from')
    v1.train.Saver({v.op.name: v for v in wanted}).restore(session, checkpoint)
    log.info('initialised the model from %s (step 0, fresh optimiser)', checkpoint)


def training_start(task=None):
    """Architecture, the checkpoint to resume (--restore) and the one to start from (--init_from) of a training,
    after refusing combinations that would lose or mix models. A cluster's chief started again resumes its
    cluster's training without --restore: a launcher restarts it with the command it first ran."""
    directory = FLAGS.checkpoint_dir
    checkpoint = latest_checkpoint(directory)
    restarted = task is not None and checkpoint is not None and saved_cluster(directory) == task.cluster
    if restarted:
        log.info('%s holds a checkpoint of this cluster\'s training: the chief resumes it', directory)
    if FLAGS.restore and FLAGS.init_from:
        raise UserError('--restore continues a training, --init_from starts a new one from a model: choose one')
    if FLAGS.restore and checkpoint is None:
        raise UserError('--restore: no checkpoint in --checkpoint_dir=%s' % FLAGS.checkpoint_dir)
    restore = FLAGS.restore or restarted
    if restore and 'global_step' not in dict(tf.train.list_variables(checkpoint)):
        raise UserError('--restore: --checkpoint_dir=%s holds an exported model (no step or optimiser state) that '
                        'cannot be continued: start a new training from it with --init_from=%s' % (
                            directory, directory))
    if not restore and (checkpoint or best_checkpoint(directory)[0]):
        raise UserError('--checkpoint_dir=%s already holds a trained model: pass --restore to continue training '
                        'it, or choose another --checkpoint_dir' % FLAGS.checkpoint_dir)
    if FLAGS.init_from and not restarted:
        arch, init_checkpoint = init_model(FLAGS.init_from)
        return arch, init_checkpoint, None
    return resolve_architecture(load_architecture(directory) if restore else None, directory), None, checkpoint


def saved_cluster(directory):
    """The cluster {job: [address]} that trained the model of a folder, or None."""
    try:
        with open(os.path.join(directory, CLUSTER_FILE)) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def check_writable(directory, flag_name):
    """A folder training will write to (made when training starts) must be one that can be made and written: else
    a UserError now, before anything is read or written."""
    existing = os.path.abspath(directory)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError('--%s=%s cannot be created: %s is a file' % (flag_name, directory, existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError('--%s=%s cannot be written (no write permission in %s)' % (flag_name, directory, existing))


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(path):
    """(host, pid, alive) of the training that holds a lock file, or None where there is none. A lock made a moment
    ago may not hold its line yet: it is read again for up to 5 s."""
    for _ in range(50):
        try:
            with open(path) as file:
                holder = file.read().split()
        except FileNotFoundError:
            return None
        if len(holder) == 2 and holder[1].isdigit():
            host, pid = holder[0], int(holder[1])
            here = host == socket.gethostname()
            return host, pid, not here or (pid != os.getpid() and process_alive(pid))
        time.sleep(0.1)
    return '?', 0, False  # a lock without its line for 5 s: its writer died at once


def check_not_in_use(directory):
    """A folder a live training holds is a UserError that names the holder."""
    holder = lock_holder(os.path.join(directory, LOCK_FILE))
    if holder and holder[2]:
        raise UserError('--checkpoint_dir=%s is in use by another training (process %d on %s): wait for it to end, '
                        'or choose another --checkpoint_dir (if that process is gone, delete %s)' % (
                            directory, holder[1], holder[0], os.path.join(directory, LOCK_FILE)))


@contextlib.contextmanager
def training_lock(directory):
    """Holds checkpoint_dir for one training: a lock file naming its host and process. A live holder refuses the
    start; the lock of a process that is gone (killed) is taken over with a warning."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            check_not_in_use(directory)
            log.warning('warning: %s: taking over the lock of a training that is gone', path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    with os.fdopen(descriptor, 'w') as file:
        file.write('%s %d\n' % (socket.gethostname(), os.getpid()))
    try:
        yield
    finally:
        os.remove(path)


LEFTOVERS = re.compile(r'.*\.tempstate\d*|.*\.meta\.tmp.*|checkpoint\.tmp.*|\..*\.tmp|.*_temp')


def remove_leftovers(directory):
    """Removes what a killed training leaves in its folders: partly written files (TensorFlow's .tempstate,
    .meta.tmp and checkpoint.tmp, this tool's .tmp) and the data files of checkpoints whose index was never
    written."""
    removed = []
    for folder in (directory, best_dir(directory)):
        names = os.listdir(folder) if os.path.isdir(folder) else []
        for name in names:
            orphan = re.fullmatch(r'(%s-\d+)\.data-\d+-of-\d+' % CHECKPOINT_PREFIX, name)
            if LEFTOVERS.fullmatch(name) or (orphan and orphan.group(1) + '.index' not in names):
                path = os.path.join(folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                removed.append(os.path.relpath(path, directory))
    if removed:
        log.warning('warning: removed what an interrupted training left in %s: %s', directory,
                    ', '.join(utils.shorten(removed)))


class Keeper:
    """A training's checkpoints in its folder: the rolling ones (the last 5) and the best validated model in best/
    with best.json (its step, accuracy and CER), never deleted."""

    def __init__(self, directory):
        self.directory = directory
        self.rolling = v1.train.Saver(max_to_keep=5, save_relative_paths=True)
        self.best_saver = v1.train.Saver(max_to_keep=1, save_relative_paths=True)
        self.best = {'step': None, 'accuracy': -1.0, 'cer': float('inf')}

    def resume(self, session, checkpoint):
        """Restores a checkpoint of the folder and takes over its lists of checkpoints and its best record."""
        check_fits(checkpoint, v1.global_variables(), 'from %s' % os.path.join(self.directory, ARCHITECTURE_FILE))
        self.rolling.restore(session, checkpoint)
        self.rolling.recover_last_checkpoints(
            tf.train.get_checkpoint_state(self.directory).all_model_checkpoint_paths)
        best_path, best = best_checkpoint(self.directory)
        if best_path:
            self.best_saver.recover_last_checkpoints([best_path])
            self.best = best

    def save(self, session, step):
        self.rolling.save(session, os.path.join(self.directory, CHECKPOINT_PREFIX), global_step=step)
        log.info('step %d: saved checkpoint to %s', step, self.directory)

    def offer(self, session, step, accuracy, cer):
        """Keeps the model as the best when it validates better than the best so far."""
        if (accuracy, -cer) > (self.best['accuracy'], -self.best['cer']):
            self.best = {'step': int(step), 'accuracy': accuracy, 'cer': cer}
            self.best_saver.save(session, os.path.join(best_dir(self.directory), CHECKPOINT_PREFIX), global_step=step)
            utils.write_atomically(os.path.join(best_dir(self.directory), BEST_FILE), json.dumps(self.best, indent=2))
        log.info('step %d: best so far accuracy %.4f, CER %.4f at step %d', step, self.best['accuracy'],
                 self.best['cer'], self.best['step'])


def validate(session, validator, charset, writer, keeper, step):
    """Reads val_dir, logs and summarises accuracy, CER and a few readings, and keeps the best model."""
    results = read_all(session, validator, charset)
    accuracy, cer = report_validation(results, step)
    writer.add_summary(v1.Summary(value=[v1.Summary.Value(tag='val/accuracy', simple_value=accuracy),
                                         v1.Summary.Value(tag='val/cer', simple_value=cer),
                                         v1.Summary.Value(tag='val/readings', image=readings_image(results))]),
                       step)
    keeper.offer(session, step, accuracy, cer)


def readings_image(results, count=SAMPLES_SHOWN):
    """A TensorBoard image of the first validation images, each above its label and reading, wrong ones first."""
    order = sorted(range(len(results['labels'])), key=lambda i: results['predictions'][i] == results['labels'][i])
    rows = []
    for i in order[:count]:
        image = cv2.imread(results['paths'][i], cv2.IMREAD_COLOR)
        image = cv2.resize(image if image is not None else np.zeros((60, 180, 3), np.uint8), (240, 80))
        caption = np.full((24, 240, 3), 255, np.uint8)
        cv2.putText(caption, 'label %s read %s' % (results['labels'][i], results['predictions'][i]), (4, 17),
                    cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 0) if results['predictions'][i] == results['labels'][i]
                    else (0, 0, 200), 1, cv2.LINE_AA)
        rows += [image, caption]
    grid = np.vstack(rows)
    return v1.Summary.Image(height=grid.shape[0], width=grid.shape[1], colorspace=3,
                            encoded_image_string=cv2.imencode('.png', grid)[1].tobytes())


def log_step(step, fetched, images_per_second, train_count):
    log.info('step %d epoch %.2f loss %.4f lr %.6f gradient norm %.2f %.1f images/s', step,
             step * FLAGS.batch_size / train_count, fetched['loss'], fetched['rate'], fetched['gradient_norm'],
             images_per_second)


def passed(before, step, every):
    """Whether the global step went past a multiple of every (in a cluster it can skip or repeat a step)."""
    return step // every > before // every


def train():
    task = utils.cluster_task()
    if task and task.job == 'ps':
        return serve_variables(task)
    server = join_cluster(task) if task else None
    if task and not task.is_chief:
        return follow_chief(task, server)
    # settings
    check_writable(FLAGS.checkpoint_dir, 'checkpoint_dir')
    check_writable(FLAGS.log_dir, 'log_dir')
    check_not_in_use(FLAGS.checkpoint_dir)
    arch, init_checkpoint, checkpoint = training_start(task)
    check_schedule()
    devices = training_towers(task)
    charset = utils.Charset(arch.charset)
    # data
    train_data, train_count = labelled_set(FLAGS.train_dir, 'train_dir', arch, charset, FLAGS.batch_size,
                                           shard=shard(task), shuffle=True, seed=FLAGS.seed,
                                           repeat=FLAGS.num_epochs, augment=FLAGS.augment)
    val_data, val_count = labelled_set(FLAGS.val_dir, 'val_dir', arch, charset, FLAGS.batch_size)
    if os.path.realpath(FLAGS.train_dir) == os.path.realpath(FLAGS.val_dir):
        log.warning('warning: --train_dir and --val_dir are the same folder: validation measures the images the '
                    'model trains on, not how it reads new ones')
    log.info('training on %d images of %s, validating on %d of %s; %d time steps, %d classes',
             train_count, FLAGS.train_dir, val_count, FLAGS.val_dir, ocr.time_steps(arch), charset.num_classes)
    # graph
    v1.set_random_seed(FLAGS.seed)
    with placement(task):
        global_step = v1.train.get_or_create_global_step()
        batch = v1.data.make_one_shot_iterator(ocr.batches_for_towers(train_data, len(devices))).get_next()
        training, opt = training_graph(arch, batch, global_step, devices, task)
        training['paths'] = batch['paths']
        validator = build_reader(arch, val_data, 'val')
        summaries = v1.summary.merge([v1.summary.scalar(name, training[name])
                                      for name in ('loss', 'rate', 'gradient_norm')])
        keeper = Keeper(FLAGS.checkpoint_dir)
        replication = Replication(task, opt) if task else None

    def start(session):
        """Initialises the model, or loads it (--init_from) or resumes it (--restore)."""
        remove_leftovers(FLAGS.checkpoint_dir)
        session.run(v1.global_variables_initializer())
        with placement(task):
            if init_checkpoint:
                initialise_from(session, init_checkpoint)
            if checkpoint:
                keeper.resume(session, checkpoint)
                log.info('restored %s at step %d', checkpoint, session.run(global_step))

    # session and restore, holding the folder
    with training_lock(FLAGS.checkpoint_dir), \
            (replication.chief_session(server, start, arch) if task else plain_session(start)) as session, \
            contextlib.closing(v1.summary.FileWriter(FLAGS.log_dir, session.graph)) as writer:
        save_architecture(arch, FLAGS.checkpoint_dir)
        if task:
            utils.write_atomically(os.path.join(FLAGS.checkpoint_dir, CLUSTER_FILE), json.dumps(task.cluster) + '\n')
        step = saved_step = validated_step = session.run(global_step)
        # loop
        first_step, timer_start, timer_runs = step + 1, time.time(), 0
        interrupted = stop_on_ctrl_c()
        try:
            while (not FLAGS.max_steps or step < FLAGS.max_steps) and not interrupted:
                fetched, summary = session.run([training, summaries])
                before, step, timer_runs = step, fetched['step'], timer_runs + 1
                check_finite(step, fetched)
                if passed(before, step, LOG_EVERY_STEPS) or step != before and step in (first_step, FLAGS.max_steps):
                    log_step(step, fetched, timer_runs * FLAGS.batch_size / (time.time() - timer_start), train_count)
                    writer.add_summary(summary, step)
                    timer_start, timer_runs = time.time(), 0
                if passed(before, step, FLAGS.validation_steps):
                    validate(session, validator, charset, writer, keeper, step)
                    validated_step = step
                if passed(before, step, FLAGS.save_steps):
                    keeper.save(session, step)
                    saved_step = step
                if step in (validated_step, saved_step):
                    timer_start, timer_runs = time.time(), 0  # images/s counts training steps only
        except tf.errors.OutOfRangeError:
            log.info('finished --num_epochs=%d', FLAGS.num_epochs)
        # save
        if interrupted:
            log.info('interrupted at step %d', step)
        if FLAGS.max_steps and first_step > FLAGS.max_steps:
            log.info('the model is already at step %d, --max_steps=%d: nothing to train', step, FLAGS.max_steps)
        if step != saved_step:
            keeper.save(session, step)
        if step != validated_step and not interrupted:
            validate(session, validator, charset, writer, keeper, step)
        if replication:
            replication.end(session)


@contextlib.contextmanager
def plain_session(start):
    """The session of a training in one process, started."""
    with v1.Session(config=session_config()) as session:
        start(session)
        yield session


def training_graph(arch, batch, global_step, devices, task):
    """ocr.training_graph with the flags' hyperparameters, the variables on the ps tasks of a cluster, and its
    workers synchronised by --sync_replicas."""
    if task is None:
        return ocr.training_graph(arch, batch, hyperparameters(), global_step, devices)
    return ocr.training_graph(arch, batch, hyperparameters(), global_step, devices,
                              ocr.replica_devices(task.cluster, task.device),
                              task.replicas if FLAGS.sync_replicas else 0)


# --- training on a cluster ------------------------------------------------------
# TensorFlow 1.x between-graph replication (utils.ClusterTask says which task this process is): ps tasks hold the
# variables; every worker builds the training graph and trains on its shard of train_dir; the chief, one of them,
# also initialises or restores the model, validates, writes checkpoint_dir and ends the training.

CLUSTER = []  # (task, gRPC server) of this process when it is a task of a cluster: TensorFlow cannot stop a server


def shard(task):
    """(index, count) of the share of train_dir this process trains on."""
    return (task.replica_index, task.replicas) if task else (0, 1)


def placement(task):
    """The device scope of a cluster task's graph: variables on the ps tasks, every other op on this task."""
    return v1.device(ocr.replica_devices(task.cluster, task.device)) if task else contextlib.nullcontext()


def cluster_config(task):
    """session_config(), seeing only this task and the ps tasks (a worker that is down does not hold others up)."""
    config = session_config()
    config.device_filters.extend([task.device] + (['/job:ps'] if task.job != 'ps' else []))
    return config


def start_server(task):
    """This task's gRPC server; a port already in use here is a UserError (gRPC would share it silently)."""
    port = int(task.address.rpartition(':')[2])
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(('', port))
        except OSError as error:
            raise UserError('%s: port %d is in use on this machine (%s)' % (task, port, error.strerror))
    try:
        CLUSTER.append((task, tf.distribute.Server(tf.train.ClusterSpec(task.cluster), job_name=task.job,
                                                   task_index=task.index, config=cluster_config(task))))
    except tf.errors.OpError as error:
        raise UserError('%s: cannot start its server: %s' % (task, error.message))
    return CLUSTER[0][1]


def wait_for_ps_tasks(task):
    """Waits up to --cluster_timeout seconds for every ps task to accept connections; a UserError names the first
    that does not."""
    deadline = time.time() + FLAGS.cluster_timeout
    for index, address in enumerate(task.cluster['ps']):
        host, _, port = address.rpartition(':')
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
                break
            except OSError as error:
                if time.time() > deadline:
                    raise UserError('%s: ps task %d at %s cannot be reached after --cluster_timeout=%d s (%s): is it '
                                    'started, and is its address right?' % (task, index, address,
                                                                           FLAGS.cluster_timeout, error))
                time.sleep(0.5)


def join_cluster(task):
    """A worker's server, once the ps tasks can be reached."""
    server = start_server(task)
    wait_for_ps_tasks(task)
    log.info('%s: %d ps task(s), %d workers, %s training', task, len(task.cluster['ps']), task.replicas,
             'synchronous' if FLAGS.sync_replicas else 'asynchronous')
    return server


def serve_variables(task):
    """A ps task: serves its share of the variables until the chief ends the training, then returns (exit 0)."""
    server = start_server(task)
    log.info('%s: serving variables until the chief ends the training', task)
    with tf.Graph().as_default():
        exit_signal = ocr.ps_exit_queue(task.index).dequeue()
        with v1.Session(server.target, config=cluster_config(task)) as session:
            session.run(exit_signal)
    log.info('%s: the chief has ended the training', task)


def architecture_from_chief(task, server):
    """The model architecture the chief trains, once it has initialised the model (waiting --cluster_timeout)."""
    with tf.Graph().as_default():
        architecture, _ = ocr.cluster_variables()
        uninitialised = v1.report_uninitialized_variables([architecture])
        with v1.Session(server.target, config=cluster_config(task)) as session:
            deadline = time.time() + FLAGS.cluster_timeout
            while session.run(uninitialised).size:
                if time.time() > deadline:
                    raise UserError('%s: the chief has not initialised the model after --cluster_timeout=%d s: is '
                                    'it started?' % (task, FLAGS.cluster_timeout))
                time.sleep(0.5)
            return ocr.Architecture(**json.loads(session.run(architecture)))


class Replication:
    """The ops by which the tasks of a cluster keep in step, built in a worker's graph: the chief publishes the
    architecture and, with --sync_replicas, hands out the SyncReplicasOptimizer's step tokens; at the end it tells
    the workers, waits for them, and lets the ps tasks exit."""

    def __init__(self, task, opt):
        self.task = task
        self.architecture, self.finished = ocr.cluster_variables()
        self.sync = opt if FLAGS.sync_replicas else None
        ready = v1.report_uninitialized_variables(v1.global_variables() + [self.architecture, self.finished])
        if self.sync:
            local_init = opt.chief_init_op if task.is_chief else opt.local_step_init_op
            ready_for_local_init = opt.ready_for_local_init_op  # the model's variables initialised
            self.first_tokens, self.wake_workers = opt.get_init_tokens_op(), opt.get_init_tokens_op(task.replicas)
            self.token_runner = opt.get_chief_queue_runner()
        else:
            local_init, ready_for_local_init = None, None
        self.manager = v1.train.SessionManager(local_init_op=local_init, ready_op=ready,
                                               ready_for_local_init_op=ready_for_local_init, recovery_wait_secs=1)
        self.published = tf.constant('')
        self.publish = [self.finished.initializer, self.architecture.assign(self.published)]
        self.finish = self.finished.assign(True)
        done = ocr.workers_done_queue(task.replicas)
        self.report_done, self.take_done = done.enqueue(task.replica_index), done.dequeue()
        self.ps_exits = [ocr.ps_exit_queue(index).enqueue(0) for index in range(len(task.cluster['ps']))]
        self.coordinator = v1.train.Coordinator()

    @contextlib.contextmanager
    def chief_session(self, server, start, arch):
        """The chief's session: start() initialises or restores the model, then the workers get its architecture
        and, with --sync_replicas, the first step tokens."""
        def start_and_publish(session):
            start(session)
            session.run(self.publish, {self.published: json.dumps(arch._asdict())})

        session = self.manager.prepare_session(server.target, init_fn=start_and_publish,
                                               config=cluster_config(self.task))
        if self.sync:
            session.run(self.first_tokens)
            self.token_runner.create_threads(session, coord=self.coordinator, daemon=True, start=True)
        yield session  # after an error, no close: a task that is gone would hold it up (main() ends the process)
        self.coordinator.request_stop()
        session.close()

    def worker_session(self, server):
        """A worker's session, once the chief has initialised the model (waiting --cluster_timeout)."""
        try:
            return self.manager.wait_for_session(server.target, config=cluster_config(self.task),
                                                 max_wait_secs=FLAGS.cluster_timeout)
        except tf.errors.DeadlineExceededError:
            raise UserError('%s: the chief has not initialised the model after --cluster_timeout=%d s' % (
                self.task, FLAGS.cluster_timeout))

    def end(self, session):
        """The chief's last act: tells the workers training has ended, waits (--cluster_timeout) for them to say
        they have stopped, then lets the ps tasks exit."""
        session.run(self.finish)
        if self.sync:
            session.run(self.wake_workers)  # a worker waiting for a step token gets one, and sees the end
        deadline = time.time() + FLAGS.cluster_timeout
        for _ in range(self.task.replicas - 1):
            try:
                timeout = max(1, int(1000 * (deadline - time.time())))
                session.run(self.take_done, options=v1.RunOptions(timeout_in_ms=timeout))
            except tf.errors.DeadlineExceededError:
                log.warning('warning: not every worker reported its end within --cluster_timeout=%d s',
                            FLAGS.cluster_timeout)
                break
        session.run(self.ps_exits)
        log.info('%s: training ended; the ps tasks may exit', self.task)


def follow_chief(task, server):
    """A worker other than the chief: trains on its shard of train_dir, in step with the others, until the chief
    ends the training. It writes nothing."""
    arch = architecture_from_chief(task, server)
    devices = training_towers(task)
    charset = utils.Charset(arch.charset)
    train_data, train_count = labelled_set(FLAGS.train_dir, 'train_dir', arch, charset, FLAGS.batch_size,
                                           shard=shard(task), shuffle=True, seed=FLAGS.seed + task.replica_index,
                                           repeat=FLAGS.num_epochs, augment=FLAGS.augment)
    log.info('%s: training on %d images of %s', task, train_count, FLAGS.train_dir)
    v1.set_random_seed(FLAGS.seed + task.replica_index)
    with placement(task):
        global_step = v1.train.get_or_create_global_step()
        batch = v1.data.make_one_shot_iterator(ocr.batches_for_towers(train_data, len(devices))).get_next()
        training, opt = training_graph(arch, batch, global_step, devices, task)
        replication = Replication(task, opt)
    session = replication.worker_session(server)
    step, finished, timer_start, timer_runs = session.run(global_step), False, time.time(), 0
    try:
        while (not FLAGS.max_steps or step < FLAGS.max_steps) and not finished:
            fetched = session.run(training)
            before, step, timer_runs = step, fetched['step'], timer_runs + 1
            finished = session.run(replication.finished)
            if passed(before, step, LOG_EVERY_STEPS):
                log_step(step, fetched, timer_runs * FLAGS.batch_size / (time.time() - timer_start), train_count)
                timer_start, timer_runs = time.time(), 0
    except tf.errors.OutOfRangeError:
        log.info('%s: finished --num_epochs=%d of its shard', task, FLAGS.num_epochs)
    session.run(replication.report_done)
    session.close()  # only now: after an error, a task that is gone would hold it up (main() ends the process)
    log.info('%s: stopped at step %d', task, step)


def validate_mode():
    directory = model_dir()
    arch, checkpoint, _ = restore_model(directory)
    charset = utils.Charset(arch.charset)
    val_data, _ = labelled_set(FLAGS.val_dir, 'val_dir', arch, charset, FLAGS.batch_size)
    reader = build_reader(arch, val_data, 'val')
    with v1.Session(config=session_config()) as session:
        restore(session, checkpoint, directory)
        log.info('restored %s', checkpoint)
        results = read_all(session, reader, charset)
    accuracy, cer = report_validation(results)
    report_coverage(results)
    print('accuracy=%.4f cer=%.4f images=%d' % (accuracy, cer, len(results['labels'])))


def check_infer_output(output, paths):
    """Refuses, before any image is read, an --infer_output that cannot be written or that is one of the images."""
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise UserError('--infer_output=%s is a folder: name a file to write' % output)
    if not os.path.isdir(folder):
        raise UserError('--infer_output=%s: no such folder %s' % (output, folder))
    if not os.access(folder, os.W_OK) or (os.path.exists(output) and not os.access(output, os.W_OK)):
        raise UserError('--infer_output=%s cannot be written (no write permission)' % output)
    if os.path.realpath(output) in {os.path.realpath(path) for path in paths}:
        raise UserError('--infer_output=%s is one of the images of --infer_dir: name another file' % output)


def infer():
    directory = model_dir()
    arch, checkpoint, _ = restore_model(directory)
    charset = utils.Charset(arch.charset)
    paths = utils.list_images(FLAGS.infer_dir, 'infer_dir')
    check_infer_output(FLAGS.infer_output, paths)
    shape = (arch.image_height, arch.image_width, arch.image_channel)
    reader = build_reader(arch, utils.image_dataset(paths, None, charset, FLAGS.batch_size, shape,
                                                    keep_unreadable=True), 'infer')

    def progress(done):
        if done == len(paths) or done // FLAGS.batch_size % LOG_EVERY_STEPS == 0:
            log.info('infer: %d/%d images', done, len(paths))

    with v1.Session(config=session_config()) as session:
        restore(session, checkpoint, directory)
        log.info('restored %s; reading %d images of %s', checkpoint, len(paths), FLAGS.infer_dir)
        results = read_all(session, reader, charset, progress)
    lines = []
    for path, prediction, confidence, ok in zip(results['paths'], results['predictions'], results['confidence'],
                                                results['ok']):
        prediction = prediction if ok else ''
        value = utils.expression_value(prediction)
        lines.append('%s\t%s\t%s\t%s\n' % (utils.printable_name(os.path.basename(path)), prediction,
                                             '' if value is None else value, '%.4f' % confidence if ok else ''))
    utils.write_atomically(FLAGS.infer_output, ''.join(lines))
    unreadable = results['ok'].count(False)
    log.info('wrote %d readings to %s%s', len(paths), FLAGS.infer_output,
             ' (%d unreadable images have empty readings)' % unreadable if unreadable else '')


def export():
    """Writes the model's inference variables (no optimiser slots, no step) to --export_dir with its
    architecture.json and model.json (the step and validation record it was exported from): a folder that
    --checkpoint_dir can point at, a few MB."""
    if not FLAGS.export_dir:
        raise UserError('--mode=export needs --export_dir=FOLDER to write the model to')
    if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
        raise UserError('--export_dir=%s is a file, not a folder' % FLAGS.export_dir)
    directory = model_dir()
    arch, checkpoint, best_record = restore_model(directory)
    if os.path.realpath(FLAGS.export_dir) == os.path.realpath(directory):
        raise UserError('--export_dir=%s holds the model being exported: choose another folder' % FLAGS.export_dir)
    if latest_checkpoint(FLAGS.export_dir) and not FLAGS.overwrite:
        raise UserError('--export_dir=%s already holds a model (--overwrite replaces it)' % FLAGS.export_dir)
    images = v1.placeholder(tf.uint8, [None, arch.image_height, arch.image_width, arch.image_channel])
    ocr.reading_graph(arch, images)
    with v1.Session() as session:
        restore(session, checkpoint, directory)
        path = v1.train.Saver(save_relative_paths=True).save(
            session, os.path.join(FLAGS.export_dir, CHECKPOINT_PREFIX), write_meta_graph=False)
    save_architecture(arch, FLAGS.export_dir)
    if 'global_step' in dict(tf.train.list_variables(checkpoint)):
        record = {'step': int(tf.train.load_variable(checkpoint, 'global_step'))}
        if best_record:
            record.update(validation_accuracy=best_record['accuracy'], validation_cer=best_record['cer'])
    elif os.path.exists(os.path.join(directory, EXPORT_RECORD_FILE)):  # an export exported again keeps its record
        with open(os.path.join(directory, EXPORT_RECORD_FILE)) as file:
            record = json.load(file)
    else:
        record = {}
    utils.write_atomically(os.path.join(FLAGS.export_dir, EXPORT_RECORD_FILE), json.dumps(record, indent=2) + '\n')
    write_saved_model(arch, checkpoint, FLAGS.export_dir)
    size = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(FLAGS.export_dir)
               for name in names)
    log.info('exported %s (step %s) to %s, and a SavedModel beside it: %.1f MB in all', checkpoint,
             record.get('step', '?'), path, size / 2 ** 20)


def write_saved_model(arch, checkpoint, export_dir):
    """The model as a SavedModel at the top of export_dir (saved_model.pb and variables/, tag serve) for TensorFlow
    Serving or tf.saved_model.load: its serving_default signature takes image_bytes (string [n], encoded image
    files) and returns text (string [n]) and confidence (float32 [n]); decoding, resizing and the --decoder run
    in the graph."""
    shape = [arch.image_height, arch.image_width, arch.image_channel]
    with tf.Graph().as_default() as graph:
        image_bytes = v1.placeholder(tf.string, [None], name='image_bytes')
        images = tf.map_fn(lambda encoded: utils.decode_image_bytes(encoded, *shape), image_bytes,
                           fn_output_signature=tf.TensorSpec(shape, tf.uint8))               # [n, h, w, c]
        ids, confidence = ocr.reading_graph(arch, images, FLAGS.decoder, FLAGS.beam_width)
        signature = v1.saved_model.predict_signature_def(
            {'image_bytes': image_bytes}, {'text': ocr.reading_text(arch.charset, ids), 'confidence': confidence})
        staging = tempfile.mkdtemp(dir=export_dir)
        with v1.Session(graph=graph) as session:
            v1.train.Saver().restore(session, checkpoint)
            builder = v1.saved_model.Builder(os.path.join(staging, 'saved_model'))
            builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING],
                                                 signature_def_map={'serving_default': signature},
                                                 strip_default_attrs=True)
            builder.save()
    for name in ('saved_model.pb', 'variables'):
        target = os.path.join(export_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, 'saved_model', name), target)
    shutil.rmtree(staging)


def main(argv):
    utils.setup_logging()
    try:
        if len(argv) > 1:
            raise UserError('unknown flags or arguments: %s (see python main.py --helpfull)' % ' '.join(argv[1:]))
        check_flags()
        check_precision()
        {'train': train, 'val': validate_mode, 'infer': infer, 'export': export}[FLAGS.mode]()
    except UserError as error:
        log.error('error: %s', error)
        end(2)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as error:
        if not CLUSTER:
            raise
        own = (CLUSTER[0][0].job, str(CLUSTER[0][0].index))
        gone = [task for task in re.findall(r'/job:(\w+)/replica:\d+/task:(\d+)', error.message) if task != own]
        log.error('error: %s is gone: training cannot go on. Start any ps task again, then the chief (it resumes '
                  'from its last checkpoint), then the workers', '%s task %s' % gone[0] if gone else
                  'a task of the cluster')
        end(1)
    except tf.errors.OpError as error:
        if utils.NO_READABLE_IMAGES not in error.message:
            raise
        log.error('error: %s', error.message[error.message.index(utils.NO_READABLE_IMAGES):].splitlines()[0])
        end(2)


def end(code):
    """Exits with an error code; a cluster task at once, since threads of its session may wait on a task that is
    gone and hold up the interpreter's exit."""
    if CLUSTER:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == '__main__':
    v1.disable_eager_execution()
    utils.run_app(main)
