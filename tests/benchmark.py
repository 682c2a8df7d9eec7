"""Speed of the recogniser on this machine: a script, not a test (pytest collects only test_*.py).

    python tests/benchmark.py                        # everything: 5 to 10 minutes on 2 cores
    python tests/benchmark.py --parts=train --rounds=4

At the default architecture (40x120x1, 4 conv units, bidirectional GRU 2x128) and --batch_size, for fp32 and bf16:
  train     training images/s on an in-memory batch (compute only); how the op time of a traced step divides
            between convolutions, batch norm, max-pool and the rest, and so the convolutions' own GFLOP/s (their
            FLOPs over the step time times their share: ops that overlap make it approximate);
  infer     inference images/s with the greedy and the beam decoder;
  pipeline  training images/s fed by main.py's input pipeline from an image folder, and the time a step waits in
            the iterator for its batch (from traced steps);
  startup   seconds from starting `main.py --mode=train` on a generated 100k-image folder to its first step, and
            the peak memory (RSS high-water mark) of that run;
  formats   the shipped model as each format of --mode=export runs it: file size and images/s on one core and on
            all cores, batch 1 and 64, for the SavedModel (TensorFlow; it takes encoded PNGs, so its time includes
            decoding and resizing), model.tflite and model_int8.tflite (LiteRT) and model.onnx (ONNX Runtime),
            which take the resized pixels; each against the SavedModel in the same round.
  cluster   fp32 training step time on a loopback cluster in this process (one ps task, gRPC between the tasks)
            with one worker and with two synchronous workers of half the batch each, against one process on the
            whole batch; and the bytes a step moves, from which the number of workers a network can feed.
Each speed is set against the FLOP-bound limit: the machine's own fp32 matrix-multiply GFLOP/s (a 4096^2 tf.matmul)
divided by the model's FLOPs per image, counted from the layer shapes (training: forward + gradients).

The machine may be shared: every figure of a part is measured in rounds that take turns (matmul, fp32, bf16, ...)
so that all see the same load. Speeds are medians (the best step in brackets); a fraction of the limit or a bf16
speed-up is the median over rounds of the ratio within a round. A summary table in markdown ends the output.
"""
import argparse
import collections
import os
import re
import shutil
import socket
import subprocess
import threading
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from conftest import REPO, portable_runner, random_labels, write_text_images  # conftest puts the repository on sys.path
import cnn_lstm_otc_ocr as ocr
import main
import utils
from utils import FLAGS

v1 = tf.compat.v1

PARTS = ('train', 'infer', 'pipeline', 'startup', 'formats', 'cluster')
FORMAT_BATCHES = (1, 64)
PORTABLE_MODELS = ('model.tflite', 'model_int8.tflite', 'model.onnx')
PRECISIONS = ('fp32', 'bf16')
DECODERS = ('greedy', 'beam')
MATMUL_SIZE = 4096
LABEL_CHARSET = '0123456789+-*'  # labels of the generated images
FOLDER_IMAGES = 1024  # distinct images of the pipeline's folder (in the page cache after the first epoch)
OP_CLASSES = (('convolutions', 'Conv2D'), ('batch norm', 'FusedBatchNorm'), ('max-pool', 'MaxPool'))  # name, op type
SERVERS = []  # the loopback cluster's servers, which TensorFlow cannot stop: they live as long as the process
TARGETS = {'train_fraction': 0.85, 'infer_fraction': 0.85, 'bf16_speedup': 1.4, 'wait': 0.05, 'startup_s': 10.0,
           'peak_bytes': 2 * 2 ** 30}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--parts', default=','.join(PARTS), help='comma-separated, of: %s' % ', '.join(PARTS))
    parser.add_argument('--precisions', default=','.join(PRECISIONS), help='comma-separated, of: fp32, bf16')
    parser.add_argument('--batch_size', type=int, default=128, help='images per step of train, infer, pipeline')
    parser.add_argument('--warmup_steps', type=int, default=3, help='untimed steps of each session before timing')
    parser.add_argument('--rounds', type=int, default=8, help='timed rounds of each part')
    parser.add_argument('--startup_images', type=int, default=100000, help='images of the start-up folder')
    parser.add_argument('--startup_runs', default='%d:fp32,128:fp32,128:bf16' % FLAGS['batch_size'].default,
                        help='start-up runs, comma-separated batch_size:precision (the first is held to the '
                        'targets; the default batch size is main.py\'s)')
    args = parser.parse_args(argv)
    args.startup_runs = [(int(run.split(':')[0]), run.split(':')[1]) for run in args.startup_runs.split(',')]
    args.parts, args.precisions = args.parts.split(','), args.precisions.split(',')
    for name, given, allowed in (('parts', args.parts, PARTS), ('precisions', args.precisions, PRECISIONS)):
        unknown = [value for value in given if value not in allowed]
        if unknown:
            parser.error('--%s: unknown %s (choose from %s)' % (name, ', '.join(unknown), ', '.join(allowed)))
    return args


def cpu_name():
    with open('/proc/cpuinfo') as cpuinfo:
        names = re.findall(r'^model name\s*:\s*(.*)$', cpuinfo.read(), re.MULTILINE)
    return names[0] if names else 'unknown CPU'


def load():
    """The 1-minute load average: other processes on the machine make every figure slower."""
    return os.getloadavg()[0]


# --- FLOPs -----------------------------------------------------------------------

def layer_flops(arch):
    """(name, forward FLOPs per image) of each conv, LSTM and dense layer, counted from their shapes: a
    multiply-add is 2 FLOPs; batch norm, activations, pooling, the CTC loss and the decoders are left out."""
    layers, height, width, channels = [], arch.image_height, arch.image_width, arch.image_channel
    for name, filters, pool_height, pool_width in ocr.conv_units(arch):
        layers.append((name, 2 * height * width * 3 * 3 * channels * filters))   # SAME conv, full resolution
        height, width, channels = -(-height // pool_height), -(-width // pool_width), filters
    steps, feature_height, feature_channels = ocr.feature_shape(arch)
    inputs = feature_height * feature_channels
    for layer in range(arch.rnn_layers):
        layers.append(('lstm_%d' % (layer + 1), 2 * steps * (inputs + arch.num_hidden) * 4 * arch.num_hidden))
        inputs = arch.num_hidden
    layers.append(('logits', 2 * steps * inputs * (len(arch.charset) + 1)))
    return layers


def training_flops(layers):
    """FLOPs of training `layers` (forward FLOPs as layer_flops gives them): the forward pass, the weight gradients
    (as many FLOPs again) and the input gradients of every layer but the first, whose input (the image) needs none."""
    return 2 * sum(flops for _, flops in layers) + sum(flops for _, flops in layers[1:])


def model_flops(arch):
    """(forward, training) FLOPs per image."""
    layers = layer_flops(arch)
    return sum(flops for _, flops in layers), training_flops(layers)


# --- timing in rounds ---------------------------------------------------------------

class Rounds:
    """Named step functions timed in turns: each round runs every one `block` times and keeps all but the first
    `skip` durations of its block, so that a load that comes and goes falls on all of them alike. Figures are
    medians; a ratio of two is the median of their ratios within each round."""

    def __init__(self, block=1, skip=0):
        self.steps, self.block, self.skip = collections.OrderedDict(), block, skip
        self.times = collections.defaultdict(list)  # name -> [[seconds of each kept step] of each round]

    def add(self, name, step, warmup_steps):
        for _ in range(warmup_steps):
            step()
        self.steps[name] = step

    def run(self, rounds):
        for _ in range(rounds):
            for name, step in self.steps.items():
                kept = []
                for index in range(self.block):
                    started = time.perf_counter()
                    step()
                    if index >= self.skip:
                        kept.append(time.perf_counter() - started)
                self.times[name].append(kept)

    def median(self, name):
        return float(np.median(sum(self.times[name], [])))

    def best(self, name):
        return min(sum(self.times[name], []))

    def ratio(self, name, other):
        """Median over rounds of (seconds of `name`) / (seconds of `other`) in the same round."""
        return float(np.median([np.median(mine) / np.median(theirs)
                                for mine, theirs in zip(self.times[name], self.times[other])]))


def session_step(session, fetches):
    return lambda: session.run(fetches)


def matmul_step(dtype, size=MATMUL_SIZE):
    """A session step multiplying two [size, size] matrices (2 size^3 FLOPs), fetching one number of the product."""
    graph = tf.Graph()
    with graph.as_default():
        a = tf.Variable(tf.random.normal([size, size]))
        b = tf.Variable(tf.random.normal([size, size]))
        product = tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype))
        corner = tf.reduce_sum(tf.cast(product[:1, :1], tf.float32))
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    return session, session_step(session, corner)


def add_matmuls(rounds, sessions, warmup_steps):
    for name, dtype in (('matmul fp32', tf.float32), ('matmul bf16', tf.bfloat16)):
        session, step = matmul_step(dtype)
        sessions.append(session)
        rounds.add(name, step, warmup_steps)


def matmul_gflops(rounds, precision):
    """(median, best) GFLOP/s of the matmul of `precision`."""
    flops = 2.0 * MATMUL_SIZE ** 3 / 1e9
    return flops / rounds.median('matmul %s' % precision), flops / rounds.best('matmul %s' % precision)


def limit_fraction(rounds, name, flops_per_step):
    """Median over rounds of the FLOP rate of step `name` over that of the fp32 matmul in the same round."""
    return flops_per_step / (2.0 * MATMUL_SIZE ** 3) * rounds.ratio('matmul fp32', name)


# --- data --------------------------------------------------------------------------

def write_images(folder, count, seed=0):
    """`count` labelled 60x180 images `<index>_<label>.png` of random digit and operator strings."""
    return write_text_images(folder, random_labels(count, LABEL_CHARSET, seed=seed), size=(60, 180), seed=seed)


def constant_dataset(batch):
    """A maker of a dataset of the same in-memory batch again and again: input that costs nothing."""
    return lambda: tf.data.Dataset.from_tensors(batch).repeat()


def folder_dataset(folder, arch, batch_size, **options):
    """A maker of main.py's training pipeline over a folder: shuffled, repeated, decoded as it goes; with
    cache_bytes=0 every image is read from its file every epoch, as from a folder too large to cache."""
    charset = utils.Charset(arch.charset)
    return lambda: main.labelled_set(folder, 'train_dir', arch, charset, batch_size, shuffle=True, repeat=-1,
                                     **options)[0]


def first_batch(folder, arch, batch_size):
    """One batch (numpy) of the real pipeline over a folder."""
    with tf.Graph().as_default():
        dataset = folder_dataset(folder, arch, batch_size)()
        with v1.Session() as session:
            return session.run(v1.data.make_one_shot_iterator(dataset).get_next())


# --- the model's sessions ------------------------------------------------------------

def training_session(arch, precision, make_dataset):
    """A session of main.py's training step at `precision` on batches of make_dataset()."""
    FLAGS.precision = precision
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        batch = v1.data.make_one_shot_iterator(make_dataset()).get_next()
        training, _, _ = ocr.training_graph(arch, batch, main.hyperparameters(utils.decay_steps()),
                                            v1.train.get_or_create_global_step(), main.training_towers())
        session = v1.Session(graph=graph, config=main.session_config())
        session.run(v1.global_variables_initializer())
    return session, training


def inference_session(arch, precision, decoder, make_dataset):
    """A session of main.py's reader (logits and `decoder`) at `precision`; fetches the decoded batch."""
    FLAGS.precision, FLAGS.decoder = precision, decoder
    graph = tf.Graph()
    with graph.as_default():
        initializer, fetches = main.build_reader(arch, make_dataset(), 'infer')
        session = v1.Session(graph=graph, config=main.session_config())
        session.run(v1.global_variables_initializer())
        session.run(initializer)
    return session, fetches['decoded']


def traced_ops(session, fetches, steps):
    """[{(node name, op type): seconds the node ran}] of `steps` traced steps."""
    options = v1.RunOptions(trace_level=v1.RunOptions.SOFTWARE_TRACE)
    traces = []
    for _ in range(steps):
        metadata = v1.RunMetadata()
        session.run(fetches, options=options, run_metadata=metadata)
        trace = collections.Counter()
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:  # timeline_label: 'name = OpType(inputs)'
                trace[node.node_name, node.timeline_label.partition(' = ')[2].partition('(')[0]] += (
                    node.all_end_rel_micros / 1e6)
        traces.append(trace)
    return traces


def iterator_wait(session, fetches, steps):
    """Median seconds per step that IteratorGetNext ran, i.e. the step waited for its batch, from traced steps."""
    return float(np.median([sum(seconds for (name, _), seconds in trace.items() if name.startswith('IteratorGetNext'))
                            for trace in traced_ops(session, fetches, steps)]))


def op_shares(session, fetches, steps):
    """Share of each OP_CLASSES class (and 'other') in the summed op time of traced steps."""
    totals = collections.Counter()
    for trace in traced_ops(session, fetches, steps):
        for (_, op), seconds in trace.items():
            totals[next((name for name, marker in OP_CLASSES if marker in op), 'other')] += seconds
    return {name: totals[name] / sum(totals.values()) for name, _ in OP_CLASSES + (('other', None),)}


def close(sessions):
    for session in sessions:
        session.close()
    sessions.clear()


# --- start-up on a large folder ------------------------------------------------------

def write_large_folder(folder, count, sources):
    """`count` files `<index>_<label>.png`, each a copy of one of the source images (with its label)."""
    os.makedirs(folder)
    encoded = []
    for path in sources:
        with open(path, 'rb') as file:
            encoded.append((utils.label_from_filename(path), file.read()))
    for index in range(count):
        label, data = encoded[index % len(encoded)]
        with open(os.path.join(folder, '%d_%s.png' % (index, label)), 'wb') as file:
            file.write(data)


# Runs a command and prints its peak RSS. A child forked from this large process and exec'd would report at least
# this process's RSS as its own high-water mark (Linux keeps the pre-exec mark); one forked from a small one does not.
PEAK_RSS = ('import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); '
            'print("peak_rss_kib=%d" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)')


def startup(train_dir, val_dir, work_dir, flags):
    """main.py --mode=train for one step: seconds to its log line of the training set (files listed), seconds to
    its first step's log line, and its peak RSS in bytes (the whole run: one step, a validation, a save)."""
    command = [sys.executable, '-c', PEAK_RSS, sys.executable, os.path.join(REPO, 'main.py'), '--mode=train',
               '--train_dir=%s' % train_dir, '--val_dir=%s' % val_dir, '--max_steps=1',
               '--checkpoint_dir=%s' % os.path.join(work_dir, 'checkpoint'),
               '--log_dir=%s' % os.path.join(work_dir, 'log')] + flags
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                               env=dict(os.environ, PYTHONUNBUFFERED='1'))  # each log line as it is written
    listed = first_step = peak = None
    output = []
    for line in process.stdout:
        output.append(line)
        if listed is None and line.startswith('training on '):
            listed = time.perf_counter() - started
        if first_step is None and re.match(r'step 1 ', line):
            first_step = time.perf_counter() - started
        if line.startswith('peak_rss_kib='):
            peak = int(line.split('=')[1]) * 1024
    if process.wait() != 0 or first_step is None or peak is None:
        raise RuntimeError('%s failed:\n%s' % (' '.join(command), ''.join(output)))
    return listed, first_step, peak


# --- the parts -------------------------------------------------------------------------

def report(name, value, unit, note=''):
    print('  %-40s %9s %-9s %s' % (name, value, unit, note), flush=True)


def report_matmuls(rounds, limit_name, flops_per_image):
    for precision in ('fp32', 'bf16'):
        median, best = matmul_gflops(rounds, precision)
        note = 'best %.1f' % best
        if precision == 'fp32':
            note += '; limit %.1f %s images/s' % (median * 1e9 / flops_per_image, limit_name)
        report('matmul %d^2 %s' % (MATMUL_SIZE, precision), '%.1f' % median, 'GFLOP/s', note)


def part_train(args, arch, batch, results):
    _, training = model_flops(arch)
    rounds, sessions, traced = Rounds(), [], []
    add_matmuls(rounds, sessions, args.warmup_steps)
    for precision in args.precisions:
        session, fetches = training_session(arch, precision, constant_dataset(batch))
        sessions.append(session)
        rounds.add(precision, session_step(session, fetches), args.warmup_steps)
        traced.append((session, fetches))
    rounds.run(args.rounds)
    print('train: %d rounds, load %.1f' % (args.rounds, load()))
    report_matmuls(rounds, 'training', training)
    for precision in args.precisions:
        speed = args.batch_size / rounds.median(precision)
        results['train', precision] = speed
        results['train_fraction', precision] = limit_fraction(rounds, precision, training * args.batch_size)
        report('%s training' % precision, '%.1f' % speed, 'images/s', '%.0f%% of the limit (best %.1f)' % (
            100 * results['train_fraction', precision], args.batch_size / rounds.best(precision)))
    if set(PRECISIONS) <= set(args.precisions):
        results['train_speedup'] = rounds.ratio('fp32', 'bf16')
        report('bf16 / fp32 training', '%.2f' % results['train_speedup'], 'x')
    convolution_flops = training_flops(layer_flops(arch)[:len(ocr.conv_units(arch))]) * args.batch_size
    for precision, (session, fetches) in zip(args.precisions, traced):
        shares = op_shares(session, fetches, 3)
        print('  %s training step, shares of op time: %s' % (precision, ', '.join(
            '%s %.0f%%' % (name, 100 * share) for name, share in shares.items())))
        rate = convolution_flops / (rounds.median(precision) * shares['convolutions'])
        report('  convolutions alone', '%.0f' % (rate / 1e9), 'GFLOP/s', '%.0f%% of the %s matmul' % (
            100 * rate / (matmul_gflops(rounds, precision)[0] * 1e9), precision))
    close(sessions)


def part_infer(args, arch, batch, results):
    forward, _ = model_flops(arch)
    rounds, sessions = Rounds(), []
    add_matmuls(rounds, sessions, args.warmup_steps)
    for precision in args.precisions:
        for decoder in DECODERS:
            session, fetches = inference_session(arch, precision, decoder, constant_dataset(batch))
            sessions.append(session)
            rounds.add((precision, decoder), session_step(session, fetches), args.warmup_steps)
    rounds.run(2 * args.rounds)
    close(sessions)
    print('infer: %d rounds, load %.1f' % (2 * args.rounds, load()))
    report_matmuls(rounds, 'inference', forward)
    for precision in args.precisions:
        for decoder in DECODERS:
            speed = args.batch_size / rounds.median((precision, decoder))
            results[decoder, precision] = speed
            results['%s_fraction' % decoder, precision] = limit_fraction(rounds, (precision, decoder),
                                                                          forward * args.batch_size)
            report('%s inference, %s' % (precision, decoder), '%.1f' % speed, 'images/s',
                   '%.0f%% of the limit (best %.1f)' % (100 * results['%s_fraction' % decoder, precision],
                                                        args.batch_size / rounds.best((precision, decoder))))
    if set(PRECISIONS) <= set(args.precisions):
        for decoder in DECODERS:
            results['%s_speedup' % decoder] = rounds.ratio(('fp32', decoder), ('bf16', decoder))
            report('bf16 / fp32 %s inference' % decoder, '%.2f' % results['%s_speedup' % decoder], 'x')


def part_pipeline(args, arch, batch, folder, results):
    """Training steps streaming from the image folder (no cache, as from a folder too large for one) against steps
    from an in-memory batch, in blocks of 4 (the first of a block left out: it may find the prefetch buffer refilled
    while other sessions ran); the step's wait for its batch from traced steps; then the time a validation pass
    over the folder spends reading its images, from the files and from the cache."""
    rounds, sessions, traced = Rounds(block=4, skip=1), [], {}
    for precision in args.precisions:
        for source, make_dataset in (
                ('memory', constant_dataset(batch)),
                ('folder', folder_dataset(folder, arch, args.batch_size, cache_bytes=0)),
                ('augmented', folder_dataset(folder, arch, args.batch_size, cache_bytes=0, augment=True))):
            session, fetches = training_session(arch, precision, make_dataset)
            sessions.append(session)
            rounds.add((precision, source), session_step(session, fetches), args.warmup_steps)
            if source != 'memory':
                traced[precision, source] = session, fetches
    rounds.run(max(2, args.rounds // 2))
    waits = {key: iterator_wait(session, fetches, 4) for key, (session, fetches) in traced.items()}
    close(sessions)
    print('pipeline: %d rounds, load %.1f' % (max(2, args.rounds // 2), load()))
    for precision, source in waits:
        step = rounds.median((precision, source))
        results['wait', precision, source] = waits[precision, source] / step
        report('%s training from the folder%s' % (precision, ', --augment' if source == 'augmented' else ''),
               '%.1f' % (args.batch_size / step), 'images/s', '%.1f%% slower than from memory' % (
                   100 * (rounds.ratio((precision, source), (precision, 'memory')) - 1)))
        report('  step waiting for its batch', '%.2f' % (100 * waits[precision, source] / step), '%',
               '%.1f ms of a %.0f ms step' % (1e3 * waits[precision, source], 1e3 * step))
    validation_pass = validation_time(arch, folder, args.batch_size)
    report('fp32 validation pass (beam)', '%.2f' % validation_pass, 's', '%d images' % FOLDER_IMAGES)
    for name, cache_bytes in (('from files', 0), ('cached', utils.CACHE_BYTES)):
        seconds = reading_time(arch, folder, args.batch_size, cache_bytes)
        results['validation_reading', name] = seconds / validation_pass
        report('  of which reading the images, %s' % name, '%.2f' % seconds, 's',
               '%.1f%% of the pass' % (100 * seconds / validation_pass))


def validation_time(arch, folder, batch_size, passes=3):
    """Median seconds of main.py's validation of a folder (fp32, beam), after a first pass that fills the cache."""
    FLAGS.precision, FLAGS.decoder = 'fp32', 'beam'
    charset = utils.Charset(arch.charset)
    with tf.Graph().as_default():
        dataset, _ = main.labelled_set(folder, 'val_dir', arch, charset, batch_size)
        reader = main.build_reader(arch, dataset, 'val')
        with v1.Session(config=main.session_config()) as session:
            session.run(v1.global_variables_initializer())
            times = []
            for _ in range(passes + 1):
                started = time.perf_counter()
                main.read_all(session, reader, charset)
                times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def reading_time(arch, folder, batch_size, cache_bytes, passes=3):
    """Best seconds of a pass of main.py's validation pipeline alone over a folder, after a first pass."""
    charset = utils.Charset(arch.charset)
    with tf.Graph().as_default():
        dataset, _ = main.labelled_set(folder, 'val_dir', arch, charset, batch_size, cache_bytes=cache_bytes)
        iterator = v1.data.make_initializable_iterator(dataset)
        batch = iterator.get_next()
        with v1.Session() as session:
            times = []
            for _ in range(passes + 1):
                session.run(iterator.initializer)
                started = time.perf_counter()
                try:
                    while True:
                        session.run(batch)
                except tf.errors.OutOfRangeError:
                    times.append(time.perf_counter() - started)
    return min(times[1:])


def loopback_cluster(workers):
    """A cluster of one ps task and `workers` worker tasks on free loopback ports, its servers in this process."""
    probes = [socket.socket() for _ in range(workers + 1)]
    for probe in probes:
        probe.bind(('127.0.0.1', 0))
    addresses = ['127.0.0.1:%d' % probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    cluster = {'ps': addresses[:1], 'worker': addresses[1:]}
    spec = tf.train.ClusterSpec(cluster)
    SERVERS.append(tf.distribute.Server(spec, 'ps', 0))
    servers = [tf.distribute.Server(spec, 'worker', index) for index in range(workers)]
    SERVERS.extend(servers)
    return cluster, servers


def cluster_training(arch, batch, workers):
    """main.py's synchronous cluster training of arch on a loopback cluster, each worker on its share of batch: a
    step function running one step on every worker at once (one thread each), the sessions, the coordinator of
    the chief's token thread, and the bytes of the trainable variables."""
    cluster, servers = loopback_cluster(workers)
    share = len(batch['images']) // workers
    coordinator, sessions, fetches = v1.train.Coordinator(), [], []
    for index, server in enumerate(servers):
        task_device = '/job:worker/task:%d' % index
        place = ocr.replica_devices(cluster, task_device)
        graph = tf.Graph()
        with graph.as_default(), v1.device(place):
            shard = {name: value[index * share:(index + 1) * share] for name, value in batch.items()}
            data = v1.data.make_one_shot_iterator(constant_dataset(shard)()).get_next()
            training, opt, _ = ocr.training_graph(arch, data, main.hyperparameters(utils.decay_steps()),
                                                  v1.train.get_or_create_global_step(), [task_device + '/cpu:0'],
                                                  place, replicas=workers)
            start = [v1.global_variables_initializer()] if index == 0 else []
            start += [opt.ready_for_local_init_op, opt.chief_init_op if index == 0 else opt.local_step_init_op]
            start += [opt.get_init_tokens_op()] if index == 0 else []
            runner = opt.get_chief_queue_runner()
            trainable_bytes = sum(v.shape.num_elements() * v.dtype.size for v in v1.trainable_variables())
        session = v1.Session(server.target, graph=graph,
                             config=v1.ConfigProto(device_filters=['/job:ps', task_device]))
        for op in start:
            session.run(op)
        if index == 0:
            runner.create_threads(session, coord=coordinator, daemon=True, start=True)
        sessions.append(session)
        fetches.append(training)

    def step():
        threads = [threading.Thread(target=session.run, args=(training,))
                   for session, training in zip(sessions, fetches)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return step, sessions, coordinator, trainable_bytes


def part_cluster(args, arch, batch, results):
    FLAGS.precision = 'fp32'
    rounds, sessions, coordinators = Rounds(), [], []
    session, fetches = training_session(arch, 'fp32', constant_dataset(batch))
    sessions.append(session)
    rounds.add('one process', session_step(session, fetches), args.warmup_steps)
    for workers in (1, 2):
        step, cluster_sessions, coordinator, trainable_bytes = cluster_training(arch, batch, workers)
        sessions += cluster_sessions
        coordinators.append(coordinator)
        rounds.add('%d workers' % workers, step, args.warmup_steps)
    rounds.run(args.rounds)
    print('cluster: %d rounds, load %.1f; one ps task, batch %d in all' % (args.rounds, load(), args.batch_size))
    report('one process, step', '%.3f' % rounds.median('one process'), 's')
    for workers in (1, 2):
        name = '%d workers' % workers
        results['cluster_overhead', workers] = rounds.ratio(name, 'one process') - 1
        report('%s of %d images, step' % (name, args.batch_size // workers), '%.3f' % rounds.median(name), 's',
               '%+.0f%% against one process' % (100 * results['cluster_overhead', workers]))
    moved = 2 * trainable_bytes  # a worker reads every variable and sends every gradient, each step
    results['step_bytes'] = moved
    report('bytes a worker moves per step', '%.1f' % (moved / 2 ** 20), 'MiB',
           'the variables in, their gradients out (%.1f MiB of trainable variables)' % (trainable_bytes / 2 ** 20))
    step_time = rounds.median('one process') / 2  # compute of one worker's half batch, here
    for name, bandwidth in (('1 Gbit/s', 125e6), ('10 Gbit/s', 1250e6)):
        workers = step_time * bandwidth / moved
        results['workers_fed', name] = workers
        report('workers one ps task feeds at %s' % name, '%.0f' % workers, '',
               'its link moves N x %.1f MiB in the %.2f s a step of %d images computes here' % (
                   moved / 2 ** 20, step_time, args.batch_size // 2))
    for coordinator in coordinators:
        coordinator.request_stop()
    close(sessions)


def saved_model_step(export_dir, encoded, threads):
    """A step of the SavedModel's serving_default on encoded images, in a session of `threads` threads (0: all)."""
    graph = tf.Graph()
    config = v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
    session = v1.Session(graph=graph, config=config)
    with graph.as_default():
        meta_graph = v1.saved_model.loader.load(session, ['serve'], export_dir)
    signature = meta_graph.signature_def['serving_default']
    feed = {signature.inputs['image_bytes'].name: encoded}
    fetches = [signature.outputs[name].name for name in ('text', 'confidence')]
    return session, lambda: session.run(fetches, feed)


def part_formats(args, work_dir, results):
    export_dir = os.path.join(work_dir, 'export')
    exported = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--mode=export',
                               '--checkpoint_dir=%s' % main.SHIPPED_MODEL_DIR, '--export_dir=%s' % export_dir],
                              capture_output=True, text=True)
    if exported.returncode:
        raise SystemExit('formats: the export failed:\n' + exported.stderr)
    arch = main.ModelFolder(export_dir).architecture()
    folder = os.path.join(work_dir, 'format_images')
    paths = write_images(folder, max(FORMAT_BATCHES), seed=3)
    encoded = np.array([open(path, 'rb').read() for path in paths], dtype=object)
    pixels = np.stack([utils.read_image(path, arch.image_height, arch.image_width, arch.image_channel)[0]
                       for path in paths])
    available = [name for name in PORTABLE_MODELS if os.path.exists(os.path.join(export_dir, name))]
    rounds, sessions = Rounds(), []
    cores = {'1 core': 1, '%d cores' % os.cpu_count(): os.cpu_count()}
    for cores_name, threads in cores.items():
        for batch_size in FORMAT_BATCHES:
            session, step = saved_model_step(export_dir, encoded[:batch_size], threads)
            sessions.append(session)
            rounds.add(('SavedModel', cores_name, batch_size), step, args.warmup_steps)
            for name in available:
                run = portable_runner(os.path.join(export_dir, name), threads)
                rounds.add((name, cores_name, batch_size), lambda run=run, batch=pixels[:batch_size]: run(batch),
                           args.warmup_steps)
    rounds.run(args.rounds)
    close(sessions)
    print('formats: %d rounds, load %.1f; the shipped model (%dx%d)' % (
        args.rounds, load(), arch.image_height, arch.image_width))
    sizes = {'SavedModel': sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(export_dir)
                               for name in files if name == 'saved_model.pb' or '/variables' in root)}
    sizes.update({name: os.path.getsize(os.path.join(export_dir, name)) for name in available})
    for name in ['SavedModel'] + available:
        report('%s file size' % name, '%.2f' % (sizes[name] / 2 ** 20), 'MiB')
        for cores_name in cores:
            for batch_size in FORMAT_BATCHES:
                key = (name, cores_name, batch_size)
                speed = batch_size / rounds.median(key)
                ratio = rounds.ratio(('SavedModel', cores_name, batch_size), key)
                results['format', name, cores_name, batch_size] = speed, ratio, sizes[name]
                report('  %s, batch %d' % (cores_name, batch_size), '%.1f' % speed, 'images/s',
                       '%.2fx the SavedModel' % ratio if name != 'SavedModel' else '')


def part_startup(args, sources, work_dir, results):
    """main.py --mode=train on a generated folder of --startup_images, once per --startup_runs entry."""
    started = time.perf_counter()
    large = os.path.join(work_dir, 'large')
    write_large_folder(large, args.startup_images, sources)
    written = time.perf_counter() - started
    val_dir = os.path.join(work_dir, 'val')
    write_images(val_dir, 200, seed=1)
    print('startup: %d images (written in %.1f s), load %.1f' % (args.startup_images, written, load()))
    for batch_size, precision in args.startup_runs:
        run_dir = os.path.join(work_dir, 'startup_%d_%s' % (batch_size, precision))
        listed, first_step, peak = startup(large, val_dir, run_dir, ['--batch_size=%d' % batch_size,
                                                                      '--precision=%s' % precision])
        results['startup', batch_size, precision] = first_step, peak
        report('%s, batch %d: files listed' % (precision, batch_size), '%.1f' % listed, 's', 'after main.py started')
        report('%s, batch %d: first step done' % (precision, batch_size), '%.1f' % first_step, 's',
               'load %.1f' % load())
        report('%s, batch %d: peak memory (RSS)' % (precision, batch_size), '%.0f' % (peak / 2 ** 20), 'MiB')
    shutil.rmtree(large)


# --- the summary ----------------------------------------------------------------------

def summary(args, results):
    """The figures as a markdown table: figure, value, target, met (blank where there is no target)."""
    rows = []

    def row(name, value, target='', met=None):
        rows.append('| %s | %s | %s | %s |' % (name, value, target, '' if met is None else 'yes' if met else '**no**'))

    for precision in args.precisions:
        if ('train', precision) in results:
            fraction = results['train_fraction', precision]
            held = precision == 'fp32'
            row('%s training, images/s (of the FLOP-bound limit)' % precision, '%.1f (%.0f%%)' % (
                results['train', precision], 100 * fraction), '>= 85%' if held else '',
                fraction >= TARGETS['train_fraction'] if held else None)
        for decoder in DECODERS:
            if (decoder, precision) in results:
                fraction = results['%s_fraction' % decoder, precision]
                held = precision == 'fp32' and decoder == 'greedy'
                row('%s inference %s, images/s (of the limit)' % (precision, decoder), '%.1f (%.0f%%)' % (
                    results[decoder, precision], 100 * fraction), '>= 85%' if held else '',
                    fraction >= TARGETS['infer_fraction'] if held else None)
    for kind, name in (('train', 'training'), ('greedy', 'greedy inference'), ('beam', 'beam inference')):
        if '%s_speedup' % kind in results:
            speedup = results['%s_speedup' % kind]
            row('bf16 / fp32, %s' % name, '%.2fx' % speedup, '>= 1.4x', speedup >= TARGETS['bf16_speedup'])
    for precision in args.precisions:
        for source in ('folder', 'augmented'):
            if ('wait', precision, source) in results:
                wait = results['wait', precision, source]
                row('%s step waiting for input, batch %d%s' % (
                    precision, args.batch_size, ', --augment' if source == 'augmented' else ''),
                    '%.2f%%' % (100 * wait), '< 5%', wait < TARGETS['wait'])
    for source in ('from files', 'cached'):
        if ('validation_reading', source) in results:
            row('validation pass reading images %s' % source,
                '%.1f%% of the pass' % (100 * results['validation_reading', source]))
    for index, (batch_size, precision) in enumerate(args.startup_runs):
        if ('startup', batch_size, precision) in results:
            seconds, peak = results['startup', batch_size, precision]
            held = index == 0
            name = '%dk-image folder, %s batch %d' % (args.startup_images // 1000, precision, batch_size)
            row(name + ': start to first step', '%.1f s' % seconds, '< 10 s' if held else '',
                seconds < TARGETS['startup_s'] if held else None)
            row(name + ': peak memory', '%.0f MiB' % (peak / 2 ** 20), '< 2048 MiB' if held else '',
                peak < TARGETS['peak_bytes'] if held else None)
    for key, (speed, ratio, size) in sorted((key, value) for key, value in results.items() if key[0] == 'format'):
        _, name, cores_name, batch_size = key
        row('%s (%.1f MiB), %s, batch %d: images/s (over the SavedModel)' % (name, size / 2 ** 20, cores_name,
                                                                           batch_size),
            '%.1f (%.2fx)' % (speed, ratio))
    for workers in (1, 2):
        if ('cluster_overhead', workers) in results:
            row('loopback cluster, %d worker(s): step time over one process' % workers,
                '%+.0f%%' % (100 * results['cluster_overhead', workers]))
    if 'step_bytes' in results:
        row('bytes a worker moves per step', '%.1f MiB' % (results['step_bytes'] / 2 ** 20))
        for name in ('1 Gbit/s', '10 Gbit/s'):
            row('workers one ps task feeds at %s' % name, '%.0f' % results['workers_fed', name])
    print('\n| figure | value | target | met |\n| --- | --- | --- | --- |\n' + '\n'.join(rows))


def run_parts(args, work_dir):
    FLAGS([sys.argv[0]])  # the project's defaults, so the default architecture
    arch = utils.architecture_from_flags()
    forward, training = model_flops(arch)
    print('model: %.3f GFLOP per image forward, %.3f training (counted from the layer shapes)' % (
        forward / 1e9, training / 1e9))
    folder = os.path.join(work_dir, 'images')
    sources = write_images(folder, FOLDER_IMAGES)
    batch = first_batch(folder, arch, args.batch_size)
    FLAGS.batch_size = args.batch_size
    results = {}
    if 'train' in args.parts:
        part_train(args, arch, batch, results)
    if 'infer' in args.parts:
        part_infer(args, arch, batch, results)
    if 'pipeline' in args.parts:
        part_pipeline(args, arch, batch, folder, results)
    if 'startup' in args.parts:
        part_startup(args, sources[:16], work_dir, results)
    if 'formats' in args.parts:
        part_formats(args, work_dir, results)
    if 'cluster' in args.parts:
        part_cluster(args, arch, batch, results)
    summary(args, results)


def main_benchmark(argv):
    args = parse_args(argv)
    utils.setup_logging()
    print('benchmark: batch %d, %s; TensorFlow %s; %d x %s%s; load %.1f' % (
        args.batch_size, ', '.join(args.precisions), tf.__version__, os.cpu_count(), cpu_name(),
        ' (bf16 instructions)' if utils.cpu_has_bf16() else '', load()), flush=True)
    started = time.perf_counter()
    work_dir = tempfile.mkdtemp(prefix='ocr-benchmark-')
    try:
        run_parts(args, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print('\nbenchmark took %.0f s' % (time.perf_counter() - started))


if __name__ == '__main__':
    main_benchmark(sys.argv[1:])
