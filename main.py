"""Command-line entry: `python main.py --mode=train|val|infer|export` (USAGE says what each does).

The file reads top down: dispatch; the four modes; the model folder (all a checkpoint_dir holds); the training
loop and the roles that run it (a process alone, or the chief or another worker of a cluster); the cluster's
runtime; reading; devices and sessions.
"""
import collections
import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

if __name__ == '__main__':  # Ctrl-C or SIGTERM while TensorFlow loads: nothing to save or clean yet
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, lambda signum, frame: os._exit(128 + signum))

import utils  # noqa: E402  (first of the rest: it quiets TensorFlow's and OpenCV's start-up messages)
import cv2
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import cnn_lstm_otc_ocr as ocr
from utils import FLAGS, UserError, log

v1 = tf.compat.v1

USAGE = """usage: python main.py --mode=MODE [flags]

  --mode=train   trains on --train_dir, validates on --val_dir, keeps checkpoints in --checkpoint_dir
  --mode=val     measures the model of --checkpoint_dir on --val_dir
  --mode=infer   reads every image of --infer_dir into --infer_output
  --mode=export  writes the model and a SavedModel to --export_dir

Without a model in ./checkpoint/, val, infer and export use the shipped contest model (imgs/model/)."""

# The contest model that ships with the tool (README: the shipped model), used while ./checkpoint/ is empty.
SHIPPED_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imgs', 'model')
LOG_EVERY_STEPS = 10
SAMPLES_SHOWN = 5
COVERAGE_THRESHOLDS = (0.0, 0.5, 0.9, 0.99, 0.999)
LOCK_WRITE_SECONDS = 2  # a training writes its lock's line within this time of making the file
# What each of --export_formats writes in export_dir, beside the model folder.
EXPORT_FILES = {'saved_model': ('saved_model.pb', 'variables'), 'tflite': ('model.tflite', 'model_int8.tflite'),
                'onnx': ('model.onnx',)}
ONNX_OPSET = 17


# --- dispatch -------------------------------------------------------------------

def main(argv):
    utils.setup_logging()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    task = None
    try:
        if len(argv) > 1:
            raise UserError('unknown flags or arguments: %s (see python main.py --helpfull)' % ' '.join(argv[1:]))
        utils.check_main_flags()
        if FLAGS.mode == 'train':
            task = utils.cluster_task()
            train(task)
        else:
            {'val': validate, 'infer': infer, 'export': export}[FLAGS.mode]()
    except UserError as error:
        log.error('error: %s', error)
        end(2, at_once=task is not None)
    except Interrupted as interruption:
        log.error('interrupted by %s%s', signal.Signals(interruption.signum).name,
                  ': no file was written' if FLAGS.mode != 'train' else '')
        end(128 + interruption.signum, at_once=True)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as error:
        if task is None:
            raise
        own = (task.job, str(task.index))
        gone = [other for other in re.findall(r'/job:(\w+)/replica:\d+/task:(\d+)', error.message) if other != own]
        log.error('error: %s is gone: training cannot go on. Start any ps task again, then the chief (it resumes '
                  'from its last checkpoint), then the workers', '%s task %s' % gone[0] if gone else
                  'a task of the cluster')
        end(1, at_once=task is not None)
    except tf.errors.DeadlineExceededError:
        if task is None:
            raise
        cluster_silent(task, 'training', FLAGS.cluster_timeout)
    except tf.errors.OpError as error:
        if utils.NO_READABLE_IMAGES not in error.message:
            raise
        log.error('error: %s', error.message[error.message.index(utils.NO_READABLE_IMAGES):].splitlines()[0])
        end(2, at_once=task is not None)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (what job schedulers send) outside the training loop, which saves and stops."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def interrupt(signum, frame):
    raise Interrupted(signum)


def end(code, at_once):
    """Exits with an error code; a cluster task (or an interrupted process) at once, since threads of its session
    may wait on a task that is gone, or on input, and hold up the interpreter's exit."""
    if at_once:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# --- the four modes -------------------------------------------------------------

def train(task):
    """Trains in this process alone, or as a task of the cluster that TF_CONFIG or the cluster flags describe."""
    if task and task.job == 'ps':
        return serve_variables(task)
    role = Worker(task) if task and not task.is_chief else Chief(task) if task else Alone()
    arch = role.prepare()
    devices = training_towers(task)
    charset = utils.Charset(arch.charset)
    train_data, train_count = labelled_set(FLAGS.train_dir, 'train_dir', arch, charset, FLAGS.batch_size,
                                           shard=role.shard, shuffle=True, seed=role.seed,
                                           repeat=FLAGS.num_epochs, augment=FLAGS.augment)
    books = role.books(arch, charset, train_count)
    v1.set_random_seed(role.seed)
    with role.placement():
        global_step = v1.train.get_or_create_global_step()
        batch = v1.data.make_one_shot_iterator(ocr.batches_for_towers(train_data, len(devices))).get_next()
        training = role.training_graph(arch, batch, global_step, devices)
        training['paths'] = batch['paths']
        books.build(arch, training)
    interrupted = stop_on_signals()
    with role.session(books, arch) as session, books.opened(session, arch):
        step = training_loop(session, role, books, training, session.run(global_step), train_count, interrupted)
        books.close(session, step, bool(interrupted))
        role.end(session, step)


def validate():
    folder = reading_folder()
    model = folder.model(FLAGS.checkpoint)
    charset = utils.Charset(model.arch.charset)
    val_data, count = labelled_set(FLAGS.val_dir, 'val_dir', model.arch, charset, FLAGS.batch_size)
    reader = build_reader(model.arch, val_data, 'val')
    with v1.Session(config=session_config()) as session:
        restore(session, model)
        log.info('restored %s', model.checkpoint)
        results = read_all(session, reader, charset, utils.Progress(count, 'val'))
    accuracy, cer = report_validation(results)
    report_coverage(results)
    print('accuracy=%.4f cer=%.4f images=%d' % (accuracy, cer, len(results['labels'])))


def infer():
    folder = reading_folder()
    model = folder.model(FLAGS.checkpoint)
    charset = utils.Charset(model.arch.charset)
    paths = utils.list_images(FLAGS.infer_dir, 'infer_dir')
    output = infer_output(paths)
    shape = (model.arch.image_height, model.arch.image_width, model.arch.image_channel)
    reader = build_reader(model.arch, utils.image_dataset(paths, None, charset, FLAGS.batch_size, shape,
                                                          keep_unreadable=True, flag_name='infer_dir'), 'infer')
    with v1.Session(config=session_config()) as session:
        restore(session, model)
        log.info('restored %s; reading %d images of %s', model.checkpoint, len(paths), FLAGS.infer_dir)
        results = read_all(session, reader, charset, utils.Progress(len(paths), 'infer'))
    output.write(''.join(result_lines(results)))
    unreadable = results['ok'].count(False)
    log.info('wrote %d readings to %s%s', len(paths), FLAGS.infer_output,
             ' (%d unreadable images have empty readings)' % unreadable if unreadable else '')


def export():
    """Writes the model's inference variables (no optimiser slots, no step) to --export_dir with its
    architecture.json and model.json (the step and validation record it was exported from), and beside them the
    --export_formats: a SavedModel, model.tflite and model_int8.tflite, model.onnx. The folder is one that
    --checkpoint_dir can point at, a few MB."""
    folder, model, target, formats = export_plan()
    with tf.Graph().as_default():
        images = v1.placeholder(tf.uint8, [None, model.arch.image_height, model.arch.image_width,
                                           model.arch.image_channel])
        ocr.reading_graph(model.arch, images)
        with v1.Session() as session:
            restore(session, model)
            path = v1.train.Saver(save_relative_paths=True).save(session, target.checkpoint_prefix,
                                                                 write_meta_graph=False)
    target.save_architecture(model.arch)
    record = folder.export_record(model)
    target.save_export_record(record)
    for name in set(EXPORT_FILES) - set(formats):
        target.remove_stale(EXPORT_FILES[name])
    if 'saved_model' in formats:
        write_saved_model(model.arch, model.checkpoint, FLAGS.export_dir)
    if 'tflite' in formats or 'onnx' in formats:
        write_portable_models(model.arch, model.checkpoint, FLAGS.export_dir, formats)
    log.info('exported %s (step %s) to %s%s: %.1f MB in all', model.checkpoint, record.get('step', '?'), path,
             ''.join(', ' + name for fmt in formats for name in EXPORT_FILES[fmt]), target.size() / 2 ** 20)


def export_plan():
    """The model folder and Model to export, the ModelFolder of --export_dir, made after every check, and the
    formats to write beside it (onnx left out, with a warning, where tf2onnx is missing and was not asked for)."""
    if not FLAGS.export_dir:
        raise UserError('--mode=export needs --export_dir=FOLDER to write the model to')
    formats = [name for name in utils.EXPORT_FORMATS if name in FLAGS.export_formats]
    if 'onnx' in formats and importlib.util.find_spec('tf2onnx') is None:
        if FLAGS['export_formats'].present:
            raise UserError('--export_formats=onnx needs the tf2onnx package: pip install tf2onnx')
        log.warning('warning: model.onnx is not written: it needs the tf2onnx package (pip install tf2onnx)')
        formats.remove('onnx')
    if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
        raise UserError('--export_dir=%s is a file, not a folder' % FLAGS.export_dir)
    check_writable(FLAGS.export_dir, 'export_dir')
    folder, target = reading_folder(), ModelFolder(FLAGS.export_dir)
    model = folder.model(FLAGS.checkpoint)
    if os.path.realpath(FLAGS.export_dir) == os.path.realpath(folder.directory):
        raise UserError('--export_dir=%s holds the model being exported: choose another folder' % FLAGS.export_dir)
    if target.latest() and not FLAGS.overwrite:
        raise UserError('--export_dir=%s already holds a model (--overwrite replaces it)' % FLAGS.export_dir)
    try:
        os.makedirs(FLAGS.export_dir, exist_ok=True)
    except OSError as error:
        raise UserError('--export_dir=%s cannot be created (%s)' % (FLAGS.export_dir, error.strerror))
    return folder, model, target, formats


# --- the model folder -----------------------------------------------------------

# A model to restore: its architecture, checkpoint, validation record (None for a checkpoint that is not the best)
# and what its architecture was built from (said when the checkpoint does not fit it).
Model = collections.namedtuple('Model', 'arch checkpoint record built_from')


class ModelFolder:
    """All that a checkpoint_dir (or an export) holds: architecture.json; the rolling checkpoints `ocr-model-<step>`;
    best/ with the best validated model and best.json (its step, accuracy and CER); model.json, the record an
    export keeps; cluster.json, the cluster that trained it; training.lock while a training holds it; and what a
    killed training leaves behind."""
    ARCHITECTURE = 'architecture.json'
    CHECKPOINT_PREFIX = 'ocr-model'
    BEST = 'best'
    BEST_RECORD = 'best.json'
    EXPORT_RECORD = 'model.json'
    CLUSTER = 'cluster.json'
    LOCK = 'training.lock'
    LEFTOVERS = re.compile(r'.*\.tempstate\d*|.*\.meta\.tmp.*|checkpoint\.tmp.*|\..*\.tmp|.*_temp')

    def __init__(self, directory):
        self.directory = directory
        self.best_dir = os.path.join(directory, self.BEST)
        self.checkpoint_prefix = os.path.join(directory, self.CHECKPOINT_PREFIX)

    def path(self, name):
        return os.path.join(self.directory, name)

    def architecture(self):
        """The saved architecture, or None when there is none."""
        path = self.path(self.ARCHITECTURE)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as file:
                arch = ocr.Architecture(**json.load(file))
        except OSError as error:
            raise UserError('%s cannot be read (%s)' % (path, error.strerror))
        except (ValueError, TypeError) as error:
            raise UserError('%s is not a valid architecture file of this version (%s)' % (path, error))
        utils.check_architecture(arch, path)
        return arch

    def save_architecture(self, arch):
        os.makedirs(self.directory, exist_ok=True)
        utils.write_atomically(self.path(self.ARCHITECTURE), json.dumps(arch._asdict(), indent=2) + '\n')

    def latest(self):
        """The newest rolling checkpoint, or None."""
        return tf.train.latest_checkpoint(self.directory) if os.path.isdir(self.directory) else None

    def best(self):
        """The best validated checkpoint and its record {step, accuracy, cer}, or (None, None). best.json names
        it; without a readable best.json, the newest checkpoint of best/ is used, its accuracy unknown."""
        steps = self.steps(self.best_dir)
        if not steps:
            return None, None
        record_path = os.path.join(self.best_dir, self.BEST_RECORD)
        try:
            with open(record_path) as file:
                record = json.load(file)
            record = {'step': int(record['step']), 'accuracy': float(record['accuracy']),
                      'cer': float(record['cer'])}
            if record['step'] in steps:
                return steps[record['step']], record
            problem = 'its checkpoint of step %d is missing' % record['step']
        except (OSError, ValueError, KeyError, TypeError) as error:
            problem = error
        path = steps[max(steps)]
        log.warning('warning: %s is missing or damaged (%s); %s is used, its accuracy unknown', record_path,
                    problem, path)
        return path, {'step': max(steps), 'accuracy': -1.0, 'cer': float('inf')}

    def steps(self, folder):
        """{step: checkpoint path} of the complete checkpoints (index written) in a folder."""
        names = os.listdir(folder) if os.path.isdir(folder) else []
        found = [re.fullmatch(r'%s-(\d+)\.index' % self.CHECKPOINT_PREFIX, name) for name in names]
        return {int(match.group(1)): os.path.join(folder, match.group(0)[:-len('.index')])
                for match in found if match}

    def newest(self):
        """The newest checkpoint of the folder, rolling or best (a training killed between a validation and the
        next save has only its best): a Model's checkpoint and record (None for a rolling one), or (None, None)."""
        latest, (best, record) = self.latest(), self.best()
        if best and (latest is None or record['step'] >= checkpoint_step(latest)):
            return best, record
        return latest, None

    def holds_model(self):
        return bool(self.newest()[0])

    def save_best_record(self, record):
        """Writes best.json, which makes its step's checkpoint the best, then removes the other checkpoints of
        best/ (a training killed between the two leaves them for remove_leftovers)."""
        utils.write_atomically(os.path.join(self.best_dir, self.BEST_RECORD), json.dumps(record, indent=2))
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

    def chosen(self, which):
        """The checkpoint --checkpoint chooses and its record: the best validated one (`best`; the newest when none
        was validated) or the newest (`latest`); (None, None) when there is none."""
        best, record = self.best()
        return (best, record) if which == 'best' and best else self.newest()

    def model(self, which):
        """The Model that --checkpoint chooses (`best`, or `latest`); no model here is a UserError."""
        if which == 'best' and FLAGS['checkpoint'].present and not self.best()[0]:
            raise UserError('--checkpoint=best: no validated model in %s' % self.best_dir)
        checkpoint, record = self.chosen(which)
        if which == 'best' and record:
            log.info('using the best validated model: step %d, accuracy %.4f, CER %.4f',
                     record['step'], record['accuracy'], record['cer'])
        if checkpoint is None:
            raise UserError('no checkpoint in --checkpoint_dir=%s: train a model first (--mode=train) '
                            'or point --checkpoint_dir at one' % self.directory)
        saved = self.architecture()
        if saved is None:
            log.warning('warning: %s has no %s; building the model from the flags', self.directory,
                        self.ARCHITECTURE)
        return Model(resolve_architecture(saved, self.directory), checkpoint, record, self.built_from(saved))

    def built_from(self, saved):
        if saved is None:
            return 'from the flags, as %s has no %s: give the flags it was trained with' % (
                self.directory, self.ARCHITECTURE)
        return 'from %s' % self.path(self.ARCHITECTURE)

    def export_record(self, model):
        """What model.json of an export of this folder's model says: its step and validation record; an export
        exported again keeps its record."""
        if 'global_step' in dict(tf.train.list_variables(model.checkpoint)):
            record = {'step': int(tf.train.load_variable(model.checkpoint, 'global_step'))}
            if model.record:
                record.update(validation_accuracy=model.record['accuracy'], validation_cer=model.record['cer'])
            return record
        if os.path.exists(self.path(self.EXPORT_RECORD)):
            with open(self.path(self.EXPORT_RECORD)) as file:
                return json.load(file)
        return {}

    def save_export_record(self, record):
        utils.write_atomically(self.path(self.EXPORT_RECORD), json.dumps(record, indent=2) + '\n')

    def cluster(self):
        """The cluster {job: [address]} that trained the model here, or None."""
        try:
            with open(self.path(self.CLUSTER)) as file:
                return json.load(file)
        except (OSError, ValueError):
            return None

    def save_cluster(self, cluster):
        utils.write_atomically(self.path(self.CLUSTER), json.dumps(cluster) + '\n')

    def size(self):
        return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(self.directory)
                   for name in names)

    def check_not_in_use(self):
        """A folder a live training holds is a UserError that names the holder."""
        holder = lock_holder(self.path(self.LOCK))
        if holder and holder[2]:
            raise UserError('--checkpoint_dir=%s is in use by another training (process %d on %s): wait for it to '
                            'end, or choose another --checkpoint_dir (if that process is gone, delete %s)' % (
                                self.directory, holder[1], holder[0], self.path(self.LOCK)))

    @contextlib.contextmanager
    def lock(self):
        """Holds the folder for one training: a lock file naming its host and process. A live holder refuses the
        start; the lock of a process that is gone (killed) is taken over with a warning."""
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(self.LOCK)
        while True:
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                self.check_not_in_use()
                log.warning('warning: %s: taking over the lock of a training that is gone', path)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        with os.fdopen(descriptor, 'w') as file:
            file.write('%s %d\n' % (socket.gethostname(), os.getpid()))
        try:
            yield
        finally:
            os.remove(path)

    def remove_stale(self, names):
        """Removes files of an earlier export that this one does not rewrite (they would read with another model)."""
        for name in names:
            path = self.path(name)
            if os.path.lexists(path):
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
                log.info('removed %s of the model exported there before', path)

    def remove_leftovers(self):
        """Removes what a killed training leaves: partly written files (TensorFlow's .tempstate, .meta.tmp and
        checkpoint.tmp, this tool's .tmp) and the data files of checkpoints whose index was never written."""
        removed = []
        for folder in (self.directory, self.best_dir):
            names = os.listdir(folder) if os.path.isdir(folder) else []
            for name in names:
                orphan = re.fullmatch(r'(%s-\d+)\.data-\d+-of-\d+' % self.CHECKPOINT_PREFIX, name)
                if self.LEFTOVERS.fullmatch(name) or (orphan and orphan.group(1) + '.index' not in names):
                    path = os.path.join(folder, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                    removed.append(os.path.relpath(path, self.directory))
        removed += self.remove_superseded()
        if removed:
            log.warning('warning: removed what an interrupted training left in %s: %s', self.directory,
                        ', '.join(utils.shorten(removed)))


def checkpoint_step(path):
    return int(re.search(r'-(\d+)$', path).group(1))


def lock_holder(path):
    """(host, pid, alive) of the training that holds a lock file, or None where there is none. A lock made a moment
    ago may not hold its line yet: a lock without it is waited on until it is 2 s old, then taken as dead."""
    while True:
        try:
            with open(path) as file:
                holder = file.read().split()
            age = time.time() - os.path.getmtime(path)
        except FileNotFoundError:
            return None
        if len(holder) == 2 and holder[1].isdigit():
            host, pid = holder[0], int(holder[1])
            here = host == socket.gethostname()
            return host, pid, not here or (pid != os.getpid() and process_alive(pid))
        if not 0 <= age < LOCK_WRITE_SECONDS:
            return '?', 0, False  # its writer died before writing its line
        time.sleep(0.1)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reading_folder():
    """The model folder of val, infer and export: --checkpoint_dir, or the shipped model while that flag is left
    at its default and the default folder holds no model yet."""
    folder = ModelFolder(FLAGS.checkpoint_dir)
    if FLAGS['checkpoint_dir'].present or folder.holds_model():
        return folder
    log.info('no model in %s yet: using the shipped contest model in %s (--checkpoint_dir chooses another)',
             FLAGS.checkpoint_dir, SHIPPED_MODEL_DIR)
    return ModelFolder(SHIPPED_MODEL_DIR)


def architecture_from_flags():
    return ocr.Architecture(**{name: getattr(FLAGS, name) for name in ocr.Architecture._fields})


def resolve_architecture(saved, directory, changeable=()):
    """The saved architecture where there is one (a flag given on the command line must agree, or replaces the
    saved value for the fields in changeable), else the flags."""
    if saved is None:
        arch = architecture_from_flags()
    else:
        saved = saved._replace(**{name: getattr(FLAGS, name) for name in changeable if FLAGS[name].present})
        conflicts = ['--%s=%r but the model in %s has %s=%r' % (
            name, getattr(FLAGS, name), directory, name, getattr(saved, name))
            for name in ocr.Architecture._fields
            if FLAGS[name].present and getattr(FLAGS, name) != getattr(saved, name)]
        if conflicts:
            raise UserError('\n  '.join(['flags contradict the saved model:'] + conflicts))
        arch = saved
    utils.check_architecture(arch)
    return arch


def check_fits(checkpoint, variables, context):
    """A checkpoint that lacks a variable of the graph, or holds one in another shape, is a UserError that lists
    the differences (say a num_hidden edited in architecture.json), instead of TensorFlow's restore error."""
    with readable(checkpoint):
        saved = dict(tf.train.list_variables(checkpoint))
    problems = ['%s: not in the checkpoint' % v.op.name for v in variables if v.op.name not in saved]
    problems += ['%s: %s here, %s in the checkpoint' % (v.op.name, v.shape.as_list(), saved[v.op.name])
                 for v in variables if v.op.name in saved and v.shape.as_list() != list(saved[v.op.name])]
    if problems:
        raise UserError('%s: %s does not fit the model built %s (%d differences):\n  %s' % (
            checkpoint, os.path.basename(checkpoint), context, len(problems), '\n  '.join(utils.shorten(problems))))


def restore(session, model, saver=None):
    """Restores every variable of the graph from a Model's checkpoint, after check_fits; a damaged checkpoint is a
    UserError that names it."""
    check_fits(model.checkpoint, v1.global_variables(), model.built_from)
    with readable(model.checkpoint):
        (saver or v1.train.Saver()).restore(session, model.checkpoint)


@contextlib.contextmanager
def readable(checkpoint):
    """Turns TensorFlow's error for a checkpoint that cannot be read (truncated, damaged) into a UserError."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
            tf.errors.OutOfRangeError, tf.errors.UnknownError) as error:
        raise UserError('checkpoint %s cannot be read, its files are damaged or incomplete (%s): delete them to '
                        'use an earlier checkpoint, or train again' % (checkpoint,
                                                                         error.message.strip().splitlines()[0]))


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


# --- training: the loop ---------------------------------------------------------

def training_loop(session, role, books, training, step, train_count, interrupted):
    """Runs training steps until --max_steps, the end of --num_epochs, a signal (the list interrupted holds it) or
    the chief's end of a cluster's training; returns the last step."""
    first_step, timer = step + 1, StepTimer()
    try:
        while (not FLAGS.max_steps or step < FLAGS.max_steps) and not interrupted and not role.finished(session):
            fetched = session.run(books.fetches(training))
            before, step = step, fetched['step']
            timer.ran()
            check_finite(step, fetched)
            if passed(before, step, LOG_EVERY_STEPS) or step != before and step in (first_step, FLAGS.max_steps):
                log.info('step %d epoch %.2f loss %.4f lr %.6f gradient norm %.2f %.1f images/s', step,
                         step * FLAGS.batch_size / train_count, fetched['loss'], fetched['rate'],
                         fetched['gradient_norm'], timer.images_per_second())
                books.summarise(fetched, step)
            if books.after_step(session, before, step):
                timer.restart()  # images/s counts training steps only
    except tf.errors.OutOfRangeError:
        log.info('%sfinished --num_epochs=%d%s', role.prefix, FLAGS.num_epochs, role.shard_words)
    if FLAGS.max_steps and first_step > FLAGS.max_steps:
        log.info('the model is already at step %d, --max_steps=%d: nothing to train', step, FLAGS.max_steps)
    return step


class StepTimer:
    """Images per second of the training steps since the last log line."""

    def __init__(self):
        self.restart()

    def restart(self):
        self.start, self.runs = time.time(), 0

    def ran(self):
        self.runs += 1

    def images_per_second(self):
        rate = self.runs * FLAGS.batch_size / (time.time() - self.start)
        self.restart()
        return rate


def passed(before, step, every):
    """Whether the global step went past a multiple of every (in a cluster it can skip or repeat a step)."""
    return step // every > before // every


def stop_on_signals():
    """A list that Ctrl-C (SIGINT) or SIGTERM appends to from now on, so that training (or its start) stops after
    the step in progress and saves; a second signal interrupts at once. (An exception raised in the middle of a
    session run can leave its input pipeline waiting forever.)"""
    requested = []

    def request_stop(signum, frame):
        requested.append(signum)
        log.info('%s: stopping after this step, then saving (again to stop at once)', signal.Signals(signum).name)
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, interrupt)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
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


def hyperparameters():
    return ocr.Hyperparameters(
        optimizer=FLAGS.optimizer, initial_learning_rate=FLAGS.initial_learning_rate, lr_schedule=FLAGS.lr_schedule,
        decay_steps=utils.decay_steps(), decay_rate=FLAGS.decay_rate, lr_boundaries=utils.lr_boundaries(),
        warmup_steps=utils.warmup_steps(), beta1=FLAGS.beta1, beta2=FLAGS.beta2, momentum=FLAGS.momentum,
        keep_prob=FLAGS.output_keep_prob, clip_norm=FLAGS.clip_norm, loss_scaling=FLAGS.precision == 'fp16')


# --- training: the books of the process that owns checkpoint_dir ----------------

class Books:
    """What the process that owns checkpoint_dir (alone, or a cluster's chief) does around the training steps:
    summaries, validation on val_dir, the rolling checkpoints and the best model, and their folder's lock."""

    def __init__(self, folder, arch, charset, train_count):
        self.folder, self.charset = folder, charset
        self.val_data, val_count = labelled_set(FLAGS.val_dir, 'val_dir', arch, charset, FLAGS.batch_size)
        if os.path.realpath(FLAGS.train_dir) == os.path.realpath(FLAGS.val_dir):
            log.warning('warning: --train_dir and --val_dir are the same folder: validation measures the images '
                        'the model trains on, not how it reads new ones')
        log.info('training on %d images of %s, validating on %d of %s; %d time steps, %d classes',
                 train_count, FLAGS.train_dir, val_count, FLAGS.val_dir, ocr.time_steps(arch), charset.num_classes)

    def build(self, arch, training):
        """The graph's part: the validation reader, summaries and savers."""
        self.validator = build_reader(arch, self.val_data, 'val')
        self.summaries = v1.summary.merge([v1.summary.scalar(name, training[name])
                                           for name in ('loss', 'rate', 'gradient_norm')])
        self.keeper = Keeper(self.folder)

    @contextlib.contextmanager
    def opened(self, session, arch):
        """The folder held and the summary writer open while training; the architecture saved."""
        with contextlib.closing(v1.summary.FileWriter(FLAGS.log_dir, session.graph)) as self.writer:
            self.folder.save_architecture(arch)
            self.saved_step = self.validated_step = session.run(v1.train.get_global_step())
            yield

    def fetches(self, training):
        return dict(training, summary=self.summaries)

    def summarise(self, fetched, step):
        self.writer.add_summary(fetched['summary'], step)

    def after_step(self, session, before, step):
        """Validates and saves when their steps come; returns whether it did."""
        if passed(before, step, FLAGS.validation_steps):
            self.validate(session, step)
        if passed(before, step, FLAGS.save_steps):
            self.save(session, step)
        return step in (self.validated_step, self.saved_step)

    def close(self, session, step, interrupted):
        """Saves the last step, and validates it unless Ctrl-C stopped the training."""
        if interrupted:
            log.info('interrupted at step %d', step)
        if step != self.saved_step:
            self.save(session, step)
        if step != self.validated_step and not interrupted:
            self.validate(session, step)

    def save(self, session, step):
        self.keeper.save(session, step)
        self.saved_step = step

    def validate(self, session, step):
        """Reads val_dir, logs and summarises accuracy, CER and a few readings, and keeps the best model."""
        results = read_all(session, self.validator, self.charset)
        self.validated_step = step
        if not results['labels']:
            log.warning('warning: step %d: not one image of --val_dir=%s can be read any more: validation skipped',
                        step, FLAGS.val_dir)
            return
        accuracy, cer = report_validation(results, step)
        self.writer.add_summary(v1.Summary(value=[
            v1.Summary.Value(tag='val/accuracy', simple_value=accuracy),
            v1.Summary.Value(tag='val/cer', simple_value=cer),
            v1.Summary.Value(tag='val/readings', image=readings_image(results))]), step)
        self.keeper.offer(session, step, accuracy, cer)


class NoBooks:
    """A worker of a cluster other than the chief keeps no books: it writes nothing."""

    def __init__(self, task, train_count):
        log.info('%s: training on %d images of %s', task, train_count, FLAGS.train_dir)

    def build(self, arch, training):
        pass

    @contextlib.contextmanager
    def opened(self, session, arch):
        yield

    def fetches(self, training):
        return training

    def summarise(self, fetched, step):
        pass

    def after_step(self, session, before, step):
        return False

    def close(self, session, step, interrupted):
        pass


class Keeper:
    """A training's checkpoints in its model folder: the rolling ones (the last 5) and the best validated model in
    best/ with best.json, never deleted."""

    def __init__(self, folder):
        self.folder = folder
        self.rolling = v1.train.Saver(max_to_keep=5, save_relative_paths=True)
        self.best_saver = v1.train.Saver(max_to_keep=None, save_relative_paths=True)  # best.json chooses
        self.best = {'step': None, 'accuracy': -1.0, 'cer': float('inf')}

    def resume(self, session, model):
        """Restores a Model of the folder and takes over its lists of checkpoints and its best record."""
        restore(session, model, self.rolling)
        state = tf.train.get_checkpoint_state(self.folder.directory)
        self.rolling.recover_last_checkpoints(state.all_model_checkpoint_paths if state else [])
        best_path, best = self.folder.best()
        if best_path:
            self.best = best

    def save(self, session, step):
        with self.saving(step, self.folder.directory):
            self.rolling.save(session, self.folder.checkpoint_prefix, global_step=step)
        log.info('step %d: saved checkpoint to %s', step, self.folder.directory)

    @contextlib.contextmanager
    def saving(self, step, directory):
        """A save that fails (a full disk, a folder made read-only) is a UserError that names the folder and says
        where --restore will resume, not TensorFlow's error, whose hint talks about memory."""
        try:
            yield
        except (tf.errors.OpError, OSError) as error:
            message = error.message if isinstance(error, tf.errors.OpError) else str(error)
            resume = self.folder.newest()[0]
            raise UserError('step %d: cannot save to %s: %s. Make room there, then continue with --restore (%s)' % (
                step, directory, message.strip().splitlines()[0],
                'from step %d, the last checkpoint saved' % checkpoint_step(resume) if resume
                else 'nothing was saved yet: it starts again'))

    def offer(self, session, step, accuracy, cer):
        """Keeps the model as the best when it validates better than the best so far."""
        if (accuracy, -cer) > (self.best['accuracy'], -self.best['cer']):
            self.best = {'step': int(step), 'accuracy': accuracy, 'cer': cer}
            with self.saving(step, self.folder.best_dir):
                self.best_saver.save(session, os.path.join(self.folder.best_dir, ModelFolder.CHECKPOINT_PREFIX),
                                     global_step=step)
                self.folder.save_best_record(self.best)
        log.info('step %d: best so far accuracy %.4f, CER %.4f at step %d', step, self.best['accuracy'],
                 self.best['cer'], self.best['step'])


# --- training: the roles --------------------------------------------------------
# The training loop is the same for every process that trains; what differs between a process alone, a cluster's
# chief and its other workers is in these classes.

class Role:
    """What every process that trains has: its shard (index, count) of train_dir, all of it by default, and its
    random seed, --seed plus its shard's index."""
    shard = (0, 1)

    @property
    def seed(self):
        return FLAGS.seed + self.shard[0]


class Alone(Role):
    """Training in one process: it owns checkpoint_dir, starts the model (new, --init_from or --restore), keeps
    the books and trains on all of train_dir."""
    task = None
    prefix = shard_words = ''

    def __init__(self):
        self.folder = ModelFolder(FLAGS.checkpoint_dir)

    def prepare(self):
        """The architecture, after checking the folders and choosing where the model starts from."""
        check_writable(FLAGS.checkpoint_dir, 'checkpoint_dir')
        check_writable(FLAGS.log_dir, 'log_dir')
        self.folder.check_not_in_use()
        arch, self.init_checkpoint, self.resumed = training_start(self.folder, self.restarted())
        utils.check_schedule()
        return arch

    def start(self, session, books):
        """Initialises the model, or loads it (--init_from) or resumes it (--restore)."""
        self.folder.remove_leftovers()
        session.run(v1.global_variables_initializer())
        with self.placement():
            if self.init_checkpoint:
                initialise_from(session, self.init_checkpoint)
            if self.resumed:
                books.keeper.resume(session, self.resumed)
                log.info('restored %s at step %d', self.resumed.checkpoint, session.run(v1.train.get_global_step()))

    def restarted(self):
        return False

    def books(self, arch, charset, train_count):
        return Books(self.folder, arch, charset, train_count)

    def placement(self):
        return contextlib.nullcontext()

    def training_graph(self, arch, batch, global_step, devices):
        return ocr.training_graph(arch, batch, hyperparameters(), global_step, devices)[0]

    @contextlib.contextmanager
    def session(self, books, arch):
        with self.folder.lock(), v1.Session(config=session_config()) as session:
            self.start(session, books)
            yield session

    def finished(self, session):
        return False

    def end(self, session, step):
        pass


class ClusterRole(Role):
    """What every worker of a cluster shares: its server, its shard of train_dir, variables on the ps tasks, and
    the Replication ops that keep the workers in step."""
    shard_words = ''

    def __init__(self, task):
        self.task = task
        self.prefix = '%s: ' % task if not task.is_chief else ''
        self.server = join_cluster(task)

    @property
    def shard(self):
        return self.task.replica_index, self.task.replicas

    def placement(self):
        """Variables on the ps tasks, every other op on this task."""
        return v1.device(ocr.replica_devices(self.task.cluster, self.task.device))

    def training_graph(self, arch, batch, global_step, devices):
        training, opt = ocr.training_graph(arch, batch, hyperparameters(), global_step, devices,
                                           ocr.replica_devices(self.task.cluster, self.task.device),
                                           self.task.replicas if FLAGS.sync_replicas else 0)
        self.replication = Replication(self.task, opt)
        return training


class Chief(ClusterRole, Alone):
    """A cluster's chief: trains like a process alone, and also publishes the architecture to the other workers,
    hands out their step tokens, records the cluster in checkpoint_dir and ends the training for every task. A
    chief started again resumes its cluster's last checkpoint without --restore."""

    def __init__(self, task):
        Alone.__init__(self)
        ClusterRole.__init__(self, task)

    def restarted(self):
        restarted = self.folder.newest()[0] is not None and self.folder.cluster() == self.task.cluster
        if restarted:
            log.info('%s holds a checkpoint of this cluster\'s training: the chief resumes it', self.folder.directory)
        return restarted

    @contextlib.contextmanager
    def session(self, books, arch):
        start = functools.partial(self.start, books=books)
        with self.folder.lock(), self.replication.chief_session(self.server, start, arch) as session:
            self.folder.save_cluster(self.task.cluster)
            yield session

    def end(self, session, step):
        self.replication.end(session)


class Worker(ClusterRole):
    """A worker other than the chief: trains on its shard of train_dir, in step with the others, until the chief
    ends the training. It writes nothing."""
    shard_words = ' of its shard'

    def prepare(self):
        """The architecture the chief trains (the chief initialises the model)."""
        return architecture_from_chief(self.task, self.server)

    def books(self, arch, charset, train_count):
        return NoBooks(self.task, train_count)

    @contextlib.contextmanager
    def session(self, books, arch):
        session = self.replication.worker_session(self.server)
        yield session
        session.run(self.replication.report_done)
        session.close()  # only now: after an error, a task that is gone would hold it up (main() ends the process)

    def finished(self, session):
        return session.run(self.replication.finished)

    def end(self, session, step):
        log.info('%s: stopped at step %d', self.task, step)


def training_start(folder, restarted):
    """Architecture, the checkpoint to start from (--init_from) and the Model to resume (--restore, or a chief
    started again) of a training, after refusing combinations that would lose or mix models."""
    checkpoint = folder.newest()[0]
    if FLAGS.restore and FLAGS.init_from:
        raise UserError('--restore continues a training, --init_from starts a new one from a model: choose one')
    if FLAGS.restore and checkpoint is None:
        raise UserError('--restore: no checkpoint in --checkpoint_dir=%s' % FLAGS.checkpoint_dir)
    restore = FLAGS.restore or restarted
    if restore and 'global_step' not in dict(tf.train.list_variables(checkpoint)):
        raise UserError('--restore: --checkpoint_dir=%s holds an exported model (no step or optimiser state) that '
                        'cannot be continued: start a new training from it with --init_from=%s' % (
                            folder.directory, folder.directory))
    if not restore and folder.holds_model():
        raise UserError('--checkpoint_dir=%s already holds a trained model: pass --restore to continue training '
                        'it, or choose another --checkpoint_dir' % FLAGS.checkpoint_dir)
    if FLAGS.init_from and not restarted:
        return init_model(FLAGS.init_from) + (None,)
    if not restore:
        return resolve_architecture(None, folder.directory), None, None
    saved = folder.architecture()
    arch = resolve_architecture(saved, folder.directory)
    return arch, None, Model(arch, checkpoint, None, folder.built_from(saved))


# --init_from may train the model's weights at another input size: the conv units and the RNN take any image size
# whose conv features have the model's height (its time steps follow the width).
INPUT_SIZE_FIELDS = ('image_height', 'image_width', 'max_stepsize')


def init_model(directory):
    """Architecture and checkpoint of the model folder --init_from names (the one --checkpoint chooses); a folder's
    best/ finds the architecture in the folder above. --image_height, --image_width and --max_stepsize may differ from the model's when its RNN can take the new
    conv features."""
    if not os.path.isdir(directory):
        raise UserError('--init_from=%s: no such folder' % directory)
    folder = ModelFolder(directory)
    checkpoint = folder.chosen(FLAGS.checkpoint)[0]
    if checkpoint is None:
        raise UserError('--init_from=%s holds no model checkpoint' % directory)
    saved = folder.architecture() or ModelFolder(os.path.dirname(os.path.normpath(directory))).architecture()
    if saved is None:
        raise UserError('--init_from=%s has no %s: its architecture is unknown' % (directory,
                                                                                  ModelFolder.ARCHITECTURE))
    arch = resolve_architecture(saved, directory, INPUT_SIZE_FIELDS)
    height, saved_height = ocr.feature_shape(arch)[1], ocr.feature_shape(saved)[1]
    if height != saved_height:
        raise UserError('--init_from=%s: --image_height=%d gives conv features %d high, the model\'s %d-pixel images '
                        'gave %d: its RNN cannot take them (choose a height from %d to %d)' % (
                            directory, arch.image_height, height, saved.image_height, saved_height,
                            *ocr.image_heights(arch, saved_height)))
    return arch, checkpoint


def initialise_from(session, checkpoint):
    """Loads the model's weights and batch-norm statistics from a checkpoint (not its optimiser state or step)."""
    wanted = v1.trainable_variables() + [v for v in v1.global_variables() if 'moving_' in v.op.name]
    check_fits(checkpoint, wanted, 'for --init_from')
    with readable(checkpoint):
        v1.train.Saver({v.op.name: v for v in wanted}).restore(session, checkpoint)
    log.info('initialised the model from %s (step 0, fresh optimiser)', checkpoint)


# --- training: the cluster's runtime --------------------------------------------
# TensorFlow 1.x between-graph replication (utils.ClusterTask says which task this process is): ps tasks hold the
# variables; every worker builds the training graph and trains on its shard of train_dir; the chief, one of them,
# also initialises or restores the model, validates, writes checkpoint_dir and ends the training.

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
        return tf.distribute.Server(tf.train.ClusterSpec(task.cluster), job_name=task.job, task_index=task.index,
                                    config=cluster_config(task))
    except tf.errors.OpError as error:
        raise UserError('%s: cannot start its server: %s' % (task, error.message))


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


def cluster_silent(task, doing, seconds):
    """Ends a task that waited in vain for the others."""
    log.error('error: %s: no answer from the cluster within %d s (--cluster_timeout=%d) while %s: is every task '
              'running, not stopped, and is every address one of this cluster\'s TensorFlow servers? (A chief '
              'that validates or saves for longer needs a longer --cluster_timeout)', task, seconds,
              FLAGS.cluster_timeout, doing)
    end(1, at_once=True)


@contextlib.contextmanager
def watchdog(task, doing):
    """Bounds a wait that TensorFlow's runtime leaves without a deadline (a session's creation waits forever for a
    frozen task, or for an address that is no TensorFlow server): after twice --cluster_timeout, the waits with
    deadlines of their own being over, the task ends with an error."""
    seconds = 2 * FLAGS.cluster_timeout
    timer = threading.Timer(seconds, cluster_silent, (task, doing, seconds))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def architecture_from_chief(task, server):
    """The model architecture the chief trains, once it has initialised the model (waiting --cluster_timeout)."""
    with tf.Graph().as_default(), watchdog(task, 'waiting for the chief'):
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

        with watchdog(self.task, 'starting its session'):
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
            with watchdog(self.task, 'waiting for its session'):
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


# --- reading --------------------------------------------------------------------

def build_reader(arch, dataset, mode):
    """A reading graph (mode 'val' or 'infer') over a dataset: its iterator's initializer and the tensors to fetch."""
    iterator = v1.data.make_initializable_iterator(dataset)
    batch = iterator.get_next()
    with tf.device(model_device()):
        decoded, confidence = ocr.reading_graph(arch, batch['images'], FLAGS.decoder, FLAGS.beam_width, mode)
    return iterator.initializer, {'decoded': decoded, 'confidence': confidence, 'labels': batch['labels'],
                                  'paths': batch['paths'], 'ok': batch['ok']}


def read_all(session, reader, charset, progress=None):
    """Runs a reader over its whole dataset: lists of predictions, confidences, labels, paths and readable
    flags; a utils.Progress shows how far it is."""
    initializer, fetches = reader
    session.run(initializer)
    results = {'predictions': [], 'confidence': [], 'labels': [], 'paths': [], 'ok': []}
    while True:
        try:
            batch = session.run(fetches)
        except tf.errors.OutOfRangeError:
            if progress:
                progress.finish()
            return results
        results['predictions'] += [charset.decode(row) for row in batch['decoded']]
        results['confidence'] += [float(value) for value in batch['confidence']]
        results['labels'] += [label.decode() for label in batch['labels']]
        results['paths'] += [os.fsdecode(path) for path in batch['paths']]
        results['ok'] += list(batch['ok'])
        if progress:
            progress.update(len(results['paths']))


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
    return utils.image_dataset(paths, labels, charset, batch_size, shape, flag_name=flag_name, **options), len(paths)


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


def infer_output(paths):
    """The --infer_output file (utils.OutputFile), checked before any image is read; one of the images is refused."""
    output = utils.OutputFile(FLAGS.infer_output, 'infer_output')
    if output.path in {os.path.realpath(path) for path in paths}:
        raise UserError('--infer_output=%s is one of the images of --infer_dir: name another file' % FLAGS.infer_output)
    return output


def result_lines(results):
    """The lines of infer's result file: file name, reading, its value (arithmetic expressions) and confidence; an
    unreadable image has an empty reading and confidence."""
    lines = []
    for path, prediction, confidence, ok in zip(results['paths'], results['predictions'], results['confidence'],
                                                results['ok']):
        prediction = prediction if ok else ''
        value = utils.expression_value(prediction)
        lines.append('%s\t%s\t%s\t%s\n' % (utils.printable_name(os.path.basename(path)), prediction,
                                             '' if value is None else value, '%.4f' % confidence if ok else ''))
    return lines


def write_saved_model(arch, checkpoint, export_dir):
    """The model as a SavedModel at the top of export_dir (saved_model.pb and variables/, tag serve) for TensorFlow
    Serving or tf.saved_model.load: its serving_default signature takes image_bytes (string [n], encoded image
    files) and returns text (string [n]), confidence (float32 [n]) and readable (bool [n]); decoding, resizing
    and the --decoder run in the graph. An image that cannot be decoded (or is too large) reads as '' with
    confidence 0 and readable false, without failing the others."""
    with tf.Graph().as_default() as graph:
        image_bytes = v1.placeholder(tf.string, [None], name='image_bytes')
        images, where = utils.decode_image_batch(image_bytes, arch.image_height, arch.image_width,
                                                 arch.image_channel)            # [k + 1, h, w, c], [n]
        ids, confidence = ocr.reading_graph(arch, images, FLAGS.decoder, FLAGS.beam_width)
        readable = where >= 0
        row = tf.maximum(where, 0)
        signature = v1.saved_model.predict_signature_def({'image_bytes': image_bytes}, {
            'text': tf.where(readable, tf.gather(ocr.reading_text(arch.charset, ids), row), ''),
            'confidence': tf.where(readable, tf.gather(confidence, row), 0.0), 'readable': readable})
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


def write_portable_models(arch, checkpoint, export_dir, formats):
    """model.tflite and model_int8.tflite (its weights in 8 bits) for LiteRT, model.onnx for ONNX Runtime, in
    export_dir as formats say. One signature, serving_default: image (uint8 [n, h, w, c], resized as infer
    resizes) -> labels (int32 [n, time_steps], the greedy reading's indices into architecture.json's charset,
    padded with -1) and confidence (float32 [n]); the RNN unrolled and the greedy decoding in the graph."""
    log.info('converting the model for %s (about a minute)', ' and '.join(
        {'tflite': 'LiteRT', 'onnx': 'ONNX Runtime'}[name] for name in formats if name != 'saved_model'))
    staging = tempfile.mkdtemp(dir=export_dir)
    try:
        with tf.Graph().as_default() as graph:
            image = v1.placeholder(tf.uint8, [None, arch.image_height, arch.image_width, arch.image_channel],
                                   name='image')
            labels, confidence = ocr.portable_reading_graph(arch, image)
            outputs = {'labels': tf.identity(labels, name='labels'),
                       'confidence': tf.identity(confidence, name='confidence')}
            with v1.Session(graph=graph) as session:
                v1.train.Saver().restore(session, checkpoint)
                builder = v1.saved_model.Builder(os.path.join(staging, 'portable'))
                builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING], {
                    'serving_default': v1.saved_model.predict_signature_def({'image': image}, outputs)})
                builder.save()
                frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), list(outputs))
        files = {}
        if 'tflite' in formats:
            for name, optimizations in (('model.tflite', []), ('model_int8.tflite', [tf.lite.Optimize.DEFAULT])):
                converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(staging, 'portable'))
                converter.optimizations = optimizations
                files[name] = converter.convert()
        if 'onnx' in formats:
            import tf2onnx
            names = ['image'] + list(outputs)
            files['model.onnx'] = tf2onnx.convert.from_graph_def(
                frozen, input_names=['image:0'], output_names=[name + ':0' for name in outputs], opset=ONNX_OPSET,
                tensors_to_rename={name + ':0': name for name in names})[0].SerializeToString()
        for name, data in files.items():
            with open(os.path.join(staging, name), 'wb') as file:
                file.write(data)
            os.replace(os.path.join(staging, name), os.path.join(export_dir, name))
    finally:
        shutil.rmtree(staging)


# --- devices and sessions -------------------------------------------------------

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


def cluster_config(task):
    """session_config(), seeing only this task and the ps tasks (a worker that is down does not hold others up);
    a worker's every session run waits at most --cluster_timeout for the tasks it needs (a task frozen, or an
    address answered by something else, is an error, not a hang). A ps task waits for the chief's end."""
    config = session_config()
    config.device_filters.extend([task.device] + (['/job:ps'] if task.job != 'ps' else []))
    if task.job != 'ps':
        config.operation_timeout_in_ms = FLAGS.cluster_timeout * 1000
    return config


def graph_mode():
    """Every mode but export runs TensorFlow 1.x graphs only; export converts its model to LiteRT eagerly."""
    if FLAGS.mode != 'export':
        v1.disable_eager_execution()


if __name__ == '__main__':
    utils.run_app(main, USAGE, setup=graph_mode)
