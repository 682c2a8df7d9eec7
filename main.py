"""usage: python main.py --mode=MODE [flags]

  --mode=train   trains on --train_dir, validates on --val_dir, keeps checkpoints in --checkpoint_dir
  --mode=val     measures the model of --checkpoint_dir on --val_dir
  --mode=infer   reads every image of --infer_dir into --infer_output
  --mode=export  writes the model and a SavedModel to --export_dir

Without a model in ./checkpoint/, val, infer and export use the shipped contest model (imgs/model/).
"""
# The file reads top down: dispatch; the modes val, infer and export; the model they read; training (where it
# starts, the loop, what it writes); reading; devices and sessions. The graph and TensorFlow's runtime are in
# cnn_lstm_otc_ocr, flags and files in utils.
import collections
import contextlib
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time

if __name__ == '__main__':  # Ctrl-C or SIGTERM while TensorFlow loads: nothing to save or clean yet
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, lambda signum, frame: os._exit(128 + signum))

import utils  # noqa: E402  (before cv2: it sets OpenCV's pixel bound, which OpenCV reads when it loads)
from utils import FLAGS, ModelFolder, UserError, log  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402


@contextlib.contextmanager
def quiet_stderr():
    """Nothing on stderr unless the user sets TF_CPP_MIN_LOG_LEVEL: TensorFlow prints C++ start-up lines (a "failed
    call to cuInit" on machines without a GPU reads as a failure) while it loads, before any log level applies."""
    if 'TF_CPP_MIN_LOG_LEVEL' in os.environ:
        yield
        return
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


with quiet_stderr():
    import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2  # noqa: E402

import cnn_lstm_otc_ocr as ocr  # noqa: E402

v1 = tf.compat.v1

# The contest model that ships with the tool (README: the shipped model), used while ./checkpoint/ is empty.
SHIPPED_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imgs', 'model')
LOG_EVERY_STEPS = 10
SAMPLES_SHOWN = 5
COVERAGE_THRESHOLDS = (0.0, 0.5, 0.9, 0.99, 0.999)
# What each of --export_formats writes in export_dir, beside the model folder.
EXPORT_FILES = {'saved_model': ('saved_model.pb', 'variables'), 'tflite': ('model.tflite', 'model_int8.tflite'),
                'onnx': ('model.onnx',)}


# --- dispatch -------------------------------------------------------------------

def main(argv):
    utils.setup_logging()
    v1.logging.set_verbosity(v1.logging.ERROR)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    task = None
    try:
        if len(argv) > 1:
            raise UserError('unknown flags or arguments: %s (see python main.py --helpfull)' % ' '.join(argv[1:]))
        mode = FLAGS.mode or 'train'
        if mode not in ('train', 'val', 'infer', 'export'):
            raise UserError('--mode=%s: main.py runs train, val, infer or export' % mode)
        if FLAGS.precision == 'bf16' and not utils.cpu_has_bf16():
            log.warning('warning: --precision=bf16: this CPU has no bf16 instructions (avx512_bf16 or amx_bf16); '
                        'bf16 will be emulated and slower than fp32')
        if mode == 'train':
            task = cluster_task()
            stopped_by = train(task)
            if stopped_by:  # a scheduler restarts a task that ends so, not one that ends with 0
                log.info('stopped by %s: exit code %d (--restore continues from the step saved)',
                         signal.Signals(stopped_by).name, 128 + stopped_by)
                exit_process(128 + stopped_by, at_once=True)
        else:
            {'val': validate, 'infer': infer, 'export': export}[mode]()
    except UserError as error:
        log.error('error: %s', error)
        exit_process(2, at_once=task is not None)
    except Interrupted as interruption:
        log.error('interrupted by %s%s', signal.Signals(interruption.signum).name,
                  ': no file was written' if FLAGS.mode not in (None, 'train') else '')
        exit_process(128 + interruption.signum, at_once=True)
    except tf.errors.OpError as error:
        exit_process(*explain_op_error(error, task))


def explain_op_error(error, task):
    """The message and exit code of TensorFlow's errors that a user's data or cluster cause (others are raised):
    a folder of which not one image can be read any more, a task of the cluster gone or silent."""
    if utils.NO_READABLE_IMAGES in error.message:
        log.error('error: %s', error.message[error.message.index(utils.NO_READABLE_IMAGES):].splitlines()[0])
        return 2, task is not None
    if task is None or not isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError,
                                              tf.errors.DeadlineExceededError)):
        raise error
    if isinstance(error, tf.errors.DeadlineExceededError):
        cluster_silent('training', FLAGS.cluster_timeout)
    log.error('error: %s: a task of the cluster is gone (%s): training cannot go on. Start any ps task again, then '
              'the chief (it resumes from its last checkpoint), then the workers', task,
              error.message.strip().splitlines()[0])
    return 1, True


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (what job schedulers send) outside the training loop, which saves and stops."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def interrupt(signum, frame):
    raise Interrupted(signum)


def exit_process(code, at_once):
    """Exits with an error code; a cluster task (or an interrupted process) at once, since threads of its session
    may wait on a task that is gone, or on input, and hold up the interpreter's exit."""
    if at_once:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def cluster_silent(doing, seconds):
    """Ends a task that waited in vain for the others."""
    log.error('error: no answer from the cluster within %d s (--cluster_timeout=%d) while %s: is every task running, '
              'not stopped, and is every address one of this cluster\'s TensorFlow servers? (A chief that validates '
              'or saves for longer needs a longer --cluster_timeout)', seconds, FLAGS.cluster_timeout, doing)
    exit_process(1, at_once=True)


def cluster_task():
    """This process's utils.ClusterTask, from TF_CONFIG or from --ps_hosts, --worker_hosts, --job_name and
    --task_index; None when neither describes a cluster (training in one process)."""
    if os.environ.get('TF_CONFIG') and FLAGS.job_name:
        raise UserError('both TF_CONFIG and --ps_hosts/--worker_hosts/--job_name describe a cluster: use one')
    if FLAGS.job_name:
        return utils.ClusterTask({'ps': FLAGS.ps_hosts, 'worker': FLAGS.worker_hosts}, FLAGS.job_name,
                                 FLAGS.task_index, '--ps_hosts, --worker_hosts, --job_name, --task_index')
    if not os.environ.get('TF_CONFIG'):
        return None
    try:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return utils.ClusterTask(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id or 0,
                                 'TF_CONFIG')
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise UserError('TF_CONFIG is not a cluster description {"cluster": {...}, "task": {"type": ..., "index": '
                        '...}}: %s (%s: %s)' % (os.environ['TF_CONFIG'][:200], type(error).__name__, error))


# --- the modes val, infer and export --------------------------------------------

def validate():
    model = model_to_read()
    charset = utils.Charset(model.arch.charset)
    val_data, count = labelled_set(FLAGS.val_dir, 'val_dir', model.arch, charset, FLAGS.batch_size)
    check_memory(model.arch, min(count, FLAGS.batch_size))
    reader = build_reader(model.arch, val_data, 'val')
    with v1.Session(config=session_config()) as session:
        model = restore(session, model)
        log.info('restored %s', model.checkpoint)
        results = read_all(session, reader, charset, utils.Progress(count, 'val'))
    accuracy, cer = report_validation(results)
    report_coverage(results)
    print('accuracy=%.4f cer=%.4f images=%d' % (accuracy, cer, len(results['labels'])))


def infer():
    model = model_to_read()
    charset = utils.Charset(model.arch.charset)
    paths = utils.list_images(FLAGS.infer_dir, 'infer_dir')
    output = utils.OutputFile(FLAGS.infer_output, 'infer_output')
    if output.path in {os.path.realpath(path) for path in paths}:
        raise UserError('--infer_output=%s is one of the images of --infer_dir: name another file' % FLAGS.infer_output)
    model.folder.check_not_output(FLAGS.infer_output, '--infer_output=%s' % FLAGS.infer_output)
    check_memory(model.arch, min(len(paths), FLAGS.batch_size))
    images = image_set(paths, None, charset, model.arch, 'infer_dir', FLAGS.batch_size, keep_unreadable=True)
    reader = build_reader(model.arch, images, 'infer')
    with v1.Session(config=session_config()) as session:
        model = restore(session, model)
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
    model, target, formats = export_plan()
    with tf.Graph().as_default():
        ocr.reading_graph(model.arch, v1.placeholder(tf.uint8, [None, *utils.input_shape(model.arch)]))
        with v1.Session() as session:
            def restore_and_record(model):  # the record of the checkpoint restored, however often it is read
                restore_checkpoint(session, model)
                return export_record(model)

            model, record = read_checkpoint(model, restore_and_record)
            os.makedirs(FLAGS.export_dir, exist_ok=True)
            path = v1.train.Saver(save_relative_paths=True).save(session, target.checkpoint_prefix,
                                                                 write_meta_graph=False)
    target.save_architecture(model.arch)
    target.save_record(ModelFolder.EXPORT_RECORD, record)
    for name in [name for fmt in set(EXPORT_FILES) - set(formats) for name in EXPORT_FILES[fmt]]:
        if os.path.lexists(target.path(name)):  # an earlier export's, which would read with another model
            utils.remove_path(target.path(name))
            log.info('removed %s of the model exported there before', target.path(name))
    write_formats(model._replace(checkpoint=path), formats)  # from the copy: the model's folder may change
    log.info('exported %s (step %s) to %s%s: %.1f MB in all', model.checkpoint, record.get('step', '?'), path,
             ''.join(', ' + name for fmt in formats for name in EXPORT_FILES[fmt]),
             utils.folder_size(target.directory) / 2 ** 20)


def export_plan():
    """The Model to export, the ModelFolder of --export_dir (checked, made) and the formats to write beside it
    (onnx left out, with a warning, where tf2onnx is missing and was not asked for)."""
    if not FLAGS.export_dir:
        raise UserError('--mode=export needs --export_dir=FOLDER to write the model to')
    formats = [name for name in utils.EXPORT_FORMATS if name in FLAGS.export_formats]
    if 'onnx' in formats and importlib.util.find_spec('tf2onnx') is None:
        if FLAGS['export_formats'].present:
            raise UserError('--export_formats=onnx needs the tf2onnx package: pip install tf2onnx')
        log.warning('warning: model.onnx is not written: it needs the tf2onnx package (pip install tf2onnx)')
        formats.remove('onnx')
    utils.check_writable(FLAGS.export_dir, '--export_dir=%s' % FLAGS.export_dir)
    model, target = model_to_read(), ModelFolder(FLAGS.export_dir)
    model.folder.check_not_output(FLAGS.export_dir, '--export_dir=%s' % FLAGS.export_dir)
    if target.newest_rolling() and not FLAGS.overwrite:
        raise UserError('--export_dir=%s already holds a model (--overwrite replaces it)' % FLAGS.export_dir)
    return model, target, formats


def export_record(model):
    """What model.json of an export says: the step and validation record of the checkpoint exported; an export
    exported again keeps its record."""
    if 'global_step' not in checkpoint_variables(model):
        return utils.read_record(model.folder.path(ModelFolder.EXPORT_RECORD)) or {}
    with checkpoint_errors(model):
        record = {'step': int(tf.train.load_variable(model.checkpoint, 'global_step'))}
    if model.record:
        record.update(validation_accuracy=model.record['accuracy'], validation_cer=model.record['cer'])
    return record


def write_formats(model, formats):
    """The --export_formats in --export_dir, each file replaced whole: made in a temporary folder there, which goes
    whatever happens."""
    portable = [name for name in formats if name != 'saved_model']
    with tempfile.TemporaryDirectory(dir=FLAGS.export_dir) as staging:
        if 'saved_model' in formats:
            log.info('the SavedModel reads with --decoder=%s%s (given at export, as val and infer take them)',
                     FLAGS.decoder, ' --beam_width=%d' % FLAGS.beam_width if FLAGS.decoder == 'beam' else '')
            ocr.write_serving_model(model.arch, model.checkpoint, os.path.join(staging, 'saved_model'),
                                    FLAGS.decoder, FLAGS.beam_width, utils.MAX_IMAGE_PIXELS)
        if portable:
            log.info('converting the model for %s (about a minute)', ' and '.join(
                {'tflite': 'LiteRT', 'onnx': 'ONNX Runtime'}[name] for name in portable))
            ocr.write_portable_models(model.arch, model.checkpoint, staging, portable)
        for name in [name for fmt in formats for name in EXPORT_FILES[fmt]]:
            made = os.path.join(staging, 'saved_model', name) if name in EXPORT_FILES['saved_model'] else \
                os.path.join(staging, name)
            if os.path.isdir(os.path.join(FLAGS.export_dir, name)):
                utils.remove_path(os.path.join(FLAGS.export_dir, name))
            os.replace(made, os.path.join(FLAGS.export_dir, name))


# --- the model that val, infer and export read ----------------------------------

# A model to restore: its folder, architecture, checkpoint, validation record (None for a checkpoint that is not
# the best) and what its architecture was built from (said when the checkpoint does not fit it).
Model = collections.namedtuple('Model', 'folder arch checkpoint record built_from')


def model_to_read():
    """The Model that --checkpoint chooses in --checkpoint_dir, or in the shipped model while that flag is left at
    its default and the default folder holds no model yet; no model is a UserError."""
    folder = ModelFolder(FLAGS.checkpoint_dir)
    if not FLAGS['checkpoint_dir'].present and not folder.holds_model():
        log.info('no model in %s yet: using the shipped contest model in %s (--checkpoint_dir chooses another)',
                 FLAGS.checkpoint_dir, SHIPPED_MODEL_DIR)
        folder = ModelFolder(SHIPPED_MODEL_DIR)
    if FLAGS.checkpoint == 'best' and FLAGS['checkpoint'].present and not folder.best()[0]:
        raise UserError('--checkpoint=best: no validated model in %s' % folder.best_dir)
    checkpoint, record = folder.chosen(FLAGS.checkpoint)
    if checkpoint is None:
        raise UserError('no checkpoint in --checkpoint_dir=%s: train a model first (--mode=train) or point '
                        '--checkpoint_dir at one' % folder.directory)
    if FLAGS.checkpoint == 'best' and record:
        log.info('using the best validated model: step %d, accuracy %.4f, CER %.4f', record['step'],
                 record['accuracy'], record['cer'])
    return folder_model(folder, checkpoint, record)


def folder_model(folder, checkpoint, record=None):
    """The Model of a folder's checkpoint, its architecture from the folder's architecture.json (the flags where
    there is none, with a warning)."""
    saved = folder.architecture()
    if saved is None:
        log.warning('warning: %s has no %s; building the model from the flags', folder.directory,
                    ModelFolder.ARCHITECTURE)
        built_from = 'from the flags, as %s has no %s: give the flags it was trained with' % (
            folder.directory, ModelFolder.ARCHITECTURE)
    else:
        built_from = 'from %s' % folder.path(ModelFolder.ARCHITECTURE)
    return Model(folder, resolve_architecture(saved, folder.directory), checkpoint, record, built_from)


def resolve_architecture(saved, directory, changeable=()):
    """The saved architecture where there is one (a flag given on the command line must agree, or replaces the
    saved value for the fields in changeable), else the flags."""
    if saved is None:
        return utils.architecture_from_flags()
    saved = saved._replace(**{name: getattr(FLAGS, name) for name in changeable if FLAGS[name].present})
    conflicts = ['--%s=%r but the model in %s has %s=%r' % (name, getattr(FLAGS, name), directory, name,
                                                            getattr(saved, name))
                 for name in utils.Architecture._fields
                 if FLAGS[name].present and getattr(FLAGS, name) != getattr(saved, name)]
    if conflicts:
        raise UserError('\n  '.join(['flags contradict the saved model:'] + conflicts))
    utils.Charset(saved.charset)
    return saved


def checkpoint_variables(model):
    """{name: shape} of the variables of a Model's checkpoint."""
    with checkpoint_errors(model):
        return dict(tf.train.list_variables(model.checkpoint))


def check_fits(model, variables):
    """A Model's checkpoint that lacks a variable of the graph, or holds one in another shape, is a UserError that
    lists the differences (say a num_hidden edited in architecture.json), instead of TensorFlow's restore error."""
    checkpoint, saved = model.checkpoint, checkpoint_variables(model)
    problems = ['%s: not in the checkpoint' % v.op.name for v in variables if v.op.name not in saved]
    problems += ['%s: %s here, %s in the checkpoint' % (v.op.name, v.shape.as_list(), saved[v.op.name])
                 for v in variables if v.op.name in saved and v.shape.as_list() != list(saved[v.op.name])]
    if problems:
        raise UserError('%s: %s does not fit the model built %s (%d differences):\n  %s' % (
            checkpoint, os.path.basename(checkpoint), model.built_from, len(problems),
            '\n  '.join(utils.shorten(problems))))


def restore(session, model, variables=None):
    """Restores the variables (all the graph's by default) from a Model's checkpoint (read_checkpoint); returns the
    Model read."""
    return read_checkpoint(model, lambda model: restore_checkpoint(session, model, variables))[0]


def restore_checkpoint(session, model, variables=None):
    """Restores the variables (all the graph's by default) from a Model's checkpoint, after check_fits."""
    variables = variables or v1.global_variables()
    check_fits(model, variables)
    with checkpoint_errors(model):
        v1.train.Saver(variables).restore(session, model.checkpoint)


READ_ATTEMPTS = 5  # tries to read a checkpoint of a folder that a training saves in, a second apart


def read_checkpoint(model, read):
    """(Model, read(model)). A training that holds the model's folder replaces its checkpoints as it saves (best/
    after a better validation, the oldest rolling one): a checkpoint it removed while it was read gives way, with a
    warning, to the one --checkpoint chooses a second later."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return model, read(model)
        except UnreadableCheckpoint:
            if attempt == READ_ATTEMPTS or not model.folder.holder():
                raise
        time.sleep(1)
        checkpoint, record = model.folder.chosen(FLAGS.checkpoint)
        log.warning('warning: %s changed while it was read (a training saves in %s): reading %s', model.checkpoint,
                    model.folder.directory, checkpoint)
        model = model._replace(checkpoint=checkpoint, record=record)


class UnreadableCheckpoint(UserError):
    """A checkpoint whose files cannot be read: missing, truncated or damaged."""


@contextlib.contextmanager
def checkpoint_errors(model):
    """Turns TensorFlow's error for a Model's checkpoint that cannot be read into an UnreadableCheckpoint. Deleting
    its files is advised only when no training holds the folder: one that does may be in the middle of a save."""
    try:
        yield
    except tf.errors.OpError as error:
        holder = model.folder.holder()
        raise UnreadableCheckpoint('checkpoint %s cannot be read (%s): %s' % (
            model.checkpoint, error.message.strip().splitlines()[0],
            'a training (%s) saves in %s: read it again when it has saved' % (holder, model.folder.directory)
            if holder else 'its files are damaged or incomplete; delete them to use an earlier checkpoint, or '
            'train again'))


# --- training: where it starts ----------------------------------------------------

# Where a training's model starts: its folder (checkpoint_dir), architecture, the Model whose weights it starts
# from (--init_from), the Model it resumes (--restore, or a chief started again), and whether it replaces the
# model the folder holds (--overwrite).
Start = collections.namedtuple('Start', 'folder arch init resumed replace')


def training_start(replication):
    """The Start of the process that owns checkpoint_dir (alone, or a cluster's chief), after checking its folders
    and refusing combinations that would lose or mix models. A chief started again resumes its cluster's last
    checkpoint without --restore."""
    folder = ModelFolder(FLAGS.checkpoint_dir)
    utils.check_writable(FLAGS.checkpoint_dir, '--checkpoint_dir=%s' % FLAGS.checkpoint_dir)
    utils.check_writable(FLAGS.log_dir, '--log_dir=%s' % FLAGS.log_dir)
    folder.check_not_in_use()
    checkpoint = folder.newest()[0]
    restarted = bool(replication and checkpoint and utils.read_record(folder.path(ModelFolder.CLUSTER)) ==
                     replication.task.cluster)
    if restarted:
        log.info('%s holds a checkpoint of this cluster\'s training: the chief resumes it', folder.directory)
    if FLAGS.restore and checkpoint is None:
        raise UserError('--restore: no checkpoint in --checkpoint_dir=%s' % FLAGS.checkpoint_dir)
    resumed = folder_model(folder, checkpoint) if FLAGS.restore or restarted else None
    if resumed and 'global_step' not in checkpoint_variables(resumed):
        raise UserError('--restore: --checkpoint_dir=%s holds an exported model (no step or optimiser state) that '
                        'cannot be continued: start a new training from it with --init_from=%s' % (
                            folder.directory, folder.directory))
    replace = not resumed and checkpoint is not None
    if replace and not FLAGS.overwrite:
        raise UserError('--checkpoint_dir=%s already holds a trained model: pass --restore to continue training '
                        'it, --overwrite to replace it, or choose another --checkpoint_dir' % FLAGS.checkpoint_dir)
    utils.warn_about_schedule()
    if FLAGS.init_from and not restarted:
        init = init_model(FLAGS.init_from)
        return Start(folder, init.arch, init, None, replace)
    if not resumed:
        return Start(folder, resolve_architecture(None, folder.directory), None, None, replace)
    return Start(folder, resumed.arch, None, resumed, False)


# --init_from may train the model's weights at another input size: the conv units and the RNN take any image size
# whose conv features have the model's height (its time steps follow the width).
INPUT_SIZE_FIELDS = ('image_height', 'image_width', 'max_stepsize')


def init_model(directory):
    """The Model of the folder --init_from names (the checkpoint --checkpoint chooses); a folder's
    best/ finds the architecture in the folder above. --image_height, --image_width and --max_stepsize may differ
    from the model's when its RNN can take the new conv features."""
    if not os.path.isdir(directory):
        raise UserError('--init_from=%s: no such folder' % directory)
    folder = ModelFolder(directory)
    checkpoint, record = folder.chosen(FLAGS.checkpoint)
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
    return Model(folder, arch, checkpoint, record, 'for --init_from')


def start_model(session, start, outputs, placement, schedule):
    """Initialises the model, or loads it (--init_from) or resumes it (--restore), in the folder held for the
    training (what an interrupted training left removed, and with --overwrite the model it replaces)."""
    if start.replace:
        start.folder.remove_model()
    utils.remove_leftovers(start.folder)
    session.run([v1.global_variables_initializer(), schedule.end.initializer])
    with placement:
        if start.init:
            init = restore(session, start.init, ocr.model_weights())
            log.info('initialised the model from %s (step 0, fresh optimiser)', init.checkpoint)
        if start.resumed:
            outputs.resume(session, start.resumed)
            log.info('restored %s at step %d', start.resumed.checkpoint, session.run(v1.train.get_global_step()))
        session.run(outputs.restart_averages)


# --- training: the loop -----------------------------------------------------------

def train(task):
    """Trains in this process alone, or as a task of the cluster that TF_CONFIG or the cluster flags describe. A ps
    task serves variables. The process that owns checkpoint_dir (alone, or the cluster's chief) starts the model,
    validates and saves; another worker trains on its shard of train_dir in step with the others and writes
    nothing. Returns the signal that stopped it, or None."""
    if task and task.job == 'ps':
        return ocr.serve_variables(task, cluster_config(task))
    replication = ocr.Replication(task, cluster_config(task), FLAGS.cluster_timeout, FLAGS.sync_replicas,
                                  cluster_silent) if task else None
    owner = task is None or task.is_chief
    start = training_start(replication) if owner else None
    arch = start.arch if owner else utils.Architecture(**replication.architecture_from_chief())
    devices = training_towers(task)
    shard = (task.replica_index, task.replicas) if task else (0, 1)
    charset = utils.Charset(arch.charset)
    train_data, train_count = labelled_set(FLAGS.train_dir, 'train_dir', arch, charset, FLAGS.batch_size, shard,
                                           shuffle=True, seed=FLAGS.seed + shard[0], repeat=FLAGS.num_epochs,
                                           augment=FLAGS.augment)
    check_memory(arch, FLAGS.batch_size, FLAGS.optimizer)
    outputs = TrainingOutputs(start.folder, arch, charset, train_count) if owner else None
    if not owner:
        log.info('%s: training on %d images of %s', task, train_count, FLAGS.train_dir)
    v1.set_random_seed(FLAGS.seed + shard[0])
    placement = replication.placement if replication else contextlib.nullcontext
    with placement():
        global_step = v1.train.get_or_create_global_step()
        schedule = FittedSchedule()
        batch = v1.data.make_one_shot_iterator(ocr.batches_for_towers(train_data, len(devices))).get_next()
        if FLAGS.augment:
            batch['images'] = ocr.ramped_augmentation(batch, global_step, schedule.end)
        cluster = (replication.devices(), task.replicas if FLAGS.sync_replicas else 0) if replication else ()
        training, opt, averages = ocr.training_graph(arch, batch, hyperparameters(schedule.end), global_step, devices,
                                                     *cluster)
        if replication:
            replication.build(opt)
        if outputs:
            outputs.build(arch, training, averages)
    interrupted = stop_on_signals()
    with training_session(start, replication, outputs, arch, placement(), schedule) as session:
        step = training_loop(session, dict(training, paths=batch['paths']), outputs, replication, train_count,
                             interrupted, schedule)
        if outputs:
            outputs.close(session, step, bool(interrupted))
        if replication and owner:
            replication.end(session)
        elif replication:
            log.info('%s: stopped at step %d', task, step)
    return interrupted[0] if interrupted else None


@contextlib.contextmanager
def training_session(start, replication, outputs, arch, placement, schedule):
    """The session a training runs in: the owner of checkpoint_dir holds the folder and starts the model in it (a
    chief then publishes it to the cluster and records the cluster there); another worker waits for the chief."""
    if start is None:
        with replication.worker_session() as session:
            yield session
        return
    with start.folder.locked():
        if replication is None:
            with v1.Session(config=session_config()) as session:
                start_model(session, start, outputs, placement, schedule)
                yield session
            return
        with replication.chief_session(lambda session: start_model(session, start, outputs, placement, schedule),
                                       json.dumps(arch._asdict())) as session:
            start.folder.save_record(ModelFolder.CLUSTER, replication.task.cluster)
            yield session


def training_loop(session, training, outputs, replication, train_count, interrupted, schedule):
    """Runs training steps until the step limit or the time budget, the end of --num_epochs, --patience, a signal
    (the list interrupted holds it) or the chief's end of a cluster's training; returns the last step. The process
    that owns the training (outputs) keeps the budget and fits the schedule to it."""
    step = session.run(v1.train.get_global_step())
    first_step, limit = step + 1, utils.step_limit()
    clock = utils.TrainingClock(60 * FLAGS.max_minutes if outputs else 0, limit)
    if outputs:
        outputs.start(session, step)
        log.info('training from step %d until %s', step,
                 ' or '.join(clock.limits() + ['the end of --num_epochs=%d' % FLAGS.num_epochs]))
    fetches = dict(training, summary=outputs.summaries) if outputs else training
    try:
        while (not limit or step < limit) and not interrupted and not (replication and replication.chief_ended(
                session)) and not (outputs and (clock.over(step) or outputs.out_of_patience())):
            fetched = session.run(fetches)
            before, step = step, fetched['step']
            clock.stepped(step)
            check_finite(step, fetched)
            if crossed_multiple(before, step, LOG_EVERY_STEPS) or step != before and step in (first_step, limit):
                log.info('step %d epoch %.2f loss %.4f lr %.6f gradient norm %.2f %.1f images/s, %s', step,
                         step * FLAGS.batch_size / train_count, fetched['loss'], fetched['rate'],
                         fetched['gradient_norm'], FLAGS.batch_size * clock.recent_rate(), clock.text(step))
                if outputs:
                    outputs.writer.add_summary(fetched['summary'], step)
                    schedule.follow(session, clock, step)
            started = time.monotonic()
            if outputs and outputs.after_step(session, before, step):
                clock.paused(time.monotonic() - started)
    except tf.errors.OutOfRangeError:
        log.info('%sfinished --num_epochs=%d%s', '' if outputs else '%s: ' % replication.task, FLAGS.num_epochs,
                 '' if outputs else ' of its shard')
    if limit and first_step > limit:
        log.info('the model is already at step %d, --max_steps=%d: nothing to train', step, limit)
    return step


class FittedSchedule:
    """The step at which the cosine schedule ends: a variable outside every collection (not saved; initialised by
    start_model; in a cluster on a ps task, where every worker reads it). With a time budget the process that owns
    the training moves it, as its clock re-estimates the steps the budget holds."""

    def __init__(self):
        self.end = v1.get_variable('schedule_end', initializer=float(utils.decay_steps()), trainable=False,
                                   collections=[])
        self.value = v1.placeholder(tf.float32, [])
        self.move = self.end.assign(self.value)
        self.announced = False

    def follow(self, session, clock, step):
        end = clock.end_step(step)
        if not utils.fitted_schedule() or end is None:
            return
        session.run(self.move, {self.value: end})
        if not self.announced:
            log.info('at %.1f steps/s the cosine schedule ends at about step %d, when the training does (it follows '
                     'the rate)', clock.rate(step), end)
            self.announced = True


def crossed_multiple(before, step, every):
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


def hyperparameters(schedule_end):
    """The training's hyperparameters; a cosine schedule ends at the schedule_end tensor, and its default warm-up
    takes at most a tenth of it."""
    cosine = FLAGS.lr_schedule == 'cosine'
    warmup = utils.warmup_steps()
    if cosine and not FLAGS['warmup_steps'].present:
        warmup = tf.minimum(float(warmup), schedule_end / 10)
    return ocr.Hyperparameters(
        optimizer=FLAGS.optimizer, initial_learning_rate=FLAGS.initial_learning_rate, lr_schedule=FLAGS.lr_schedule,
        decay_steps=schedule_end if cosine else utils.decay_steps(), decay_rate=FLAGS.decay_rate,
        lr_boundaries=utils.lr_boundaries(), warmup_steps=warmup, beta1=FLAGS.beta1, beta2=FLAGS.beta2,
        momentum=FLAGS.momentum, keep_prob=FLAGS.output_keep_prob, clip_norm=FLAGS.clip_norm,
        loss_scaling=FLAGS.precision == 'fp16', moving_average_decay=FLAGS.moving_average_decay)


# --- training: what it writes ---------------------------------------------------

class TrainingOutputs:
    """What the process that owns checkpoint_dir (alone, or a cluster's chief) writes around the training steps:
    summaries, validation on val_dir, the rolling checkpoints (the last 5) and the best validated model in best/
    with best.json, never deleted."""

    def __init__(self, folder, arch, charset, train_count):
        self.folder, self.charset = folder, charset
        self.val_data, val_count = labelled_set(FLAGS.val_dir, 'val_dir', arch, charset, FLAGS.batch_size)
        if os.path.realpath(FLAGS.train_dir) == os.path.realpath(FLAGS.val_dir):
            log.warning('warning: --train_dir and --val_dir are the same folder: validation measures the images '
                        'the model trains on, not how it reads new ones')
        log.info('training on %d images of %s, validating on %d of %s; %d time steps, %d classes',
                 train_count, FLAGS.train_dir, val_count, FLAGS.val_dir, ocr.time_steps(arch), charset.num_classes)
        self.best = {'step': None, 'accuracy': -1.0, 'cer': float('inf')}
        self.stale = 0  # validations since the best

    def build(self, arch, training, averages):
        """The graph's part: the validation reader and the savers, both of the weights' MovingAverages (a checkpoint
        holds them as the weights, which a resumed training starts from); summaries and their writer."""
        self.arch, self.averages = arch, averages
        with averages.reading():
            self.validator = build_reader(arch, self.val_data, 'val')
        self.summaries = v1.summary.merge([v1.summary.scalar(name, training[name])
                                           for name in ('loss', 'rate', 'gradient_norm')])
        saved = averages.saved()
        self.rolling = v1.train.Saver(saved, max_to_keep=5, save_relative_paths=True)
        self.best_saver = v1.train.Saver(saved, max_to_keep=None, save_relative_paths=True)  # best.json chooses
        self.restart_averages = averages.restart()
        self.writer = v1.summary.FileWriter(FLAGS.log_dir, v1.get_default_graph())

    def resume(self, session, model):
        """Restores a Model of the folder and takes over its lists of checkpoints and its best record."""
        restore(session, model, self.averages.model_variables())
        self.rolling.recover_last_checkpoints([path for _, path in sorted(self.folder.steps(self.folder.directory)
                                                                          .items())])
        best_path, best = self.folder.best()
        if best_path:
            self.best = best

    def start(self, session, step):
        """The architecture saved, once the session has started the model at step."""
        self.folder.save_architecture(self.arch)
        self.saved_step = self.validated_step = step

    def after_step(self, session, before, step):
        """Validates and saves when their steps come; returns whether it did."""
        if crossed_multiple(before, step, FLAGS.validation_steps):
            self.validate(session, step)
        if crossed_multiple(before, step, FLAGS.save_steps):
            self.save(session, step)
        return step in (self.validated_step, self.saved_step)

    def out_of_patience(self):
        if FLAGS.patience and self.stale >= FLAGS.patience:
            log.info('no better validation in the last %d (--patience=%d): stopping', self.stale, FLAGS.patience)
            return True
        return False

    def close(self, session, step, interrupted):
        """Saves the last step, and validates it unless Ctrl-C stopped the training."""
        if interrupted:
            log.info('interrupted at step %d', step)
        if step != self.saved_step:
            self.save(session, step)
        if step != self.validated_step and not interrupted:
            self.validate(session, step)
        self.writer.close()

    def save(self, session, step):
        with save_errors(self.folder, step, self.folder.directory):
            self.rolling.save(session, self.folder.checkpoint_prefix, global_step=step)
        self.saved_step = step
        log.info('step %d: saved checkpoint to %s', step, self.folder.directory)

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
        self.stale += 1
        if (accuracy, -cer) > (self.best['accuracy'], -self.best['cer']):
            self.best, self.stale = {'step': int(step), 'accuracy': accuracy, 'cer': cer}, 0
            with save_errors(self.folder, step, self.folder.best_dir):
                self.best_saver.save(session, os.path.join(self.folder.best_dir, ModelFolder.CHECKPOINT_PREFIX),
                                     global_step=step)
                self.folder.save_best_record(self.best)
        log.info('step %d: best so far accuracy %.4f, CER %.4f at step %d', step, self.best['accuracy'],
                 self.best['cer'], self.best['step'])


@contextlib.contextmanager
def save_errors(folder, step, directory):
    """A save of a ModelFolder's checkpoint to directory that fails (a full disk, a folder made read-only) is a
    UserError that names the folder and says where --restore will resume, not TensorFlow's error, whose hint talks
    about memory."""
    try:
        yield
    except (tf.errors.OpError, OSError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        resume = folder.newest()[0]
        raise UserError('step %d: cannot save to %s: %s. Make room there, then continue with --restore (%s)' % (
            step, directory, message.strip().splitlines()[0],
            'from step %d, the last checkpoint saved' % utils.checkpoint_step(resume) if resume
            else 'nothing was saved yet: it starts again'))


# --- reading --------------------------------------------------------------------

def image_set(paths, labels, charset, arch, flag_name, batch_size, cache_bytes=utils.CACHE_BYTES, **options):
    """A dataset of image files (ocr.image_dataset's batches); a folder of which not one image can be read is a
    UserError now, naming its flag."""
    images = utils.LabelledImages(paths, labels, charset, utils.input_shape(arch), cache_bytes)
    images.check_readable(flag_name)
    return ocr.image_dataset(images, batch_size, **options)


def labelled_set(directory, flag_name, arch, charset, batch_size, shard=(0, 1), **options):
    """A folder's labelled images as batches, and their count; shard (index, count): every count-th image from
    the index-th, a cluster worker's share."""
    paths, labels = utils.list_labelled_images(directory, flag_name, charset, ocr.time_steps(arch))
    index, count = shard
    if len(paths) < count:
        raise UserError('--%s=%s holds %d images, fewer than the %d workers of the cluster' % (
            flag_name, directory, len(paths), count))
    return image_set(paths[index::count], labels[index::count], charset, arch, flag_name, batch_size,
                     **options), len(
        paths[index::count])


def build_reader(arch, dataset, mode):
    """A reading graph (mode 'val' or 'infer') over a dataset: its iterator's initializer and the tensors to fetch."""
    iterator = v1.data.make_initializable_iterator(dataset)
    batch = iterator.get_next()
    with tf.device(tower_devices()[0]):
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


def wrong_first(results, count=SAMPLES_SHOWN):
    """The indices of the first count readings, the wrong ones first."""
    return sorted(range(len(results['labels'])),
                  key=lambda i: results['predictions'][i] == results['labels'][i])[:count]


def report_validation(results, step=None):
    """Logs accuracy, CER and a few predictions (wrong ones first); returns (accuracy, cer)."""
    predictions, labels = results['predictions'], results['labels']
    accuracy, cer = utils.accuracy_and_cer(predictions, labels)
    where = 'step %d: ' % step if step is not None else ''
    log.info('%svalidation accuracy %.4f, CER %.4f on %d images', where, accuracy, cer, len(labels))
    for i in wrong_first(results):
        log.info('  %-30s label %-12s read %-12s %s', utils.printable_name(os.path.basename(results['paths'][i])),
                 labels[i], predictions[i], 'ok' if predictions[i] == labels[i] else 'WRONG')
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


def readings_image(results):
    """A TensorBoard image of the first validation images, each above its label and reading, wrong ones first."""
    rows = []
    for i in wrong_first(results):
        image = utils.read_image(results['paths'][i], 80, 240, 3)[0] if results['ok'][i] else np.zeros((80, 240, 3),
                                                                                                     np.uint8)
        caption = np.full((24, 240, 3), 255, np.uint8)
        cv2.putText(caption, 'label %s read %s' % (results['labels'][i], results['predictions'][i]), (4, 17),
                    cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 0) if results['predictions'][i] == results['labels'][i]
                    else (0, 0, 200), 1, cv2.LINE_AA)
        rows += [image, caption]
    grid = np.vstack(rows)
    return v1.Summary.Image(height=grid.shape[0], width=grid.shape[1], colorspace=3,
                            encoded_image_string=cv2.imencode('.png', grid)[1].tobytes())


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


# --- devices and sessions -------------------------------------------------------

MEMORY_WARNING = 0.8  # of the memory the machine gives: an estimate above it is warned about
MEMORY_FIELDS = ('image_height', 'image_width', 'cnn_count', 'out_channels', 'num_hidden', 'rnn_layers')


def check_memory(arch, batch_size, optimizer=None):
    """A run whose estimated memory (ocr.memory_needed: a training step with its optimizer, else a reading of
    batch_size images) is more than the machine gives is a UserError naming the sizes and the estimate; one close
    to it, a warning. On GPU towers the activations are on the GPUs and are not counted."""
    needed = ocr.memory_needed(arch, batch_size, optimizer, FLAGS.moving_average_decay > 0)
    if FLAGS.num_gpus and FLAGS.tower_device == 'gpu':
        del needed['activations']
    available, whence = utils.memory_available()
    total = sum(needed.values())
    if total < MEMORY_WARNING * available:
        return
    message = '--batch_size=%d with %s needs about %.1f GB of memory (%s); this machine gives it %.1f GB (%s)' % (
        batch_size, ' '.join('%s=%s' % (name, getattr(arch, name)) for name in MEMORY_FIELDS), total / 1e9,
        ', '.join('%s %.1f GB' % (part, size / 1e9) for part, size in needed.items()), available / 1e9, whence)
    if total > available:
        raise UserError(message + ': lower them')
    log.warning('warning: %s: it may run out of memory', message)


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
    """Every mode but export runs TensorFlow 1.x graphs only (export converts its model to LiteRT eagerly): set
    once the flags are parsed, before TensorFlow's own start-up callbacks make its context, which would stay eager."""
    if FLAGS.mode != 'export':
        v1.disable_eager_execution()


if __name__ == '__main__':
    utils.run(main, 'main.py', graph_mode)
