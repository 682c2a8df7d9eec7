"""Training on a cluster over loopback: the cluster description, one synchronous step against one process on the
combined batch, and whole trainings of a ps task and two workers, one of them killed and started again."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import cnn_lstm_otc_ocr as ocr
import main
import utils
from conftest import REPO, SMALL_MODEL_FLAGS, USER_ENVIRONMENT, folders, run_cli, wait_for
from test_towers import HYPERPARAMETERS, SMALL, TWO_CPUS

v1 = tf.compat.v1
SGD = HYPERPARAMETERS._replace(optimizer='momentum', momentum=0.0, initial_learning_rate=1.0,  # update = -gradient
                               moving_average_decay=0.9)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(('127.0.0.1', 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def loopback_cluster(workers=2, chief=False):
    ports = iter(free_ports(1 + workers + chief))
    cluster = {'ps': ['127.0.0.1:%d' % next(ports)]}
    if chief:
        cluster['chief'] = ['127.0.0.1:%d' % next(ports)]
    cluster['worker'] = ['127.0.0.1:%d' % next(ports) for _ in range(workers)]
    return cluster


def test_the_cluster_comes_from_tf_config_or_the_flags(flags, monkeypatch):
    cluster = {'ps': ['ps0:2222'], 'chief': ['chief:2222'], 'worker': ['w0:2222', 'w1:2222']}
    monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': 1}}))
    flags()
    task = main.cluster_task()
    assert (task.device, task.is_chief, task.replicas, task.replica_index) == ('/job:worker/task:1', False, 3, 2)
    monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': cluster, 'task': {'type': 'chief', 'index': 0}}))
    assert main.cluster_task().is_chief and main.cluster_task().replica_index == 0
    monkeypatch.delenv('TF_CONFIG')
    flags('--ps_hosts=a:1', '--worker_hosts=b:2,c:3', '--job_name=worker', '--task_index=0')
    task = main.cluster_task()
    assert (task.address, task.is_chief, task.replicas) == ('b:2', True, 2)
    flags()
    assert main.cluster_task() is None


@pytest.mark.parametrize('tf_config, arguments, message', [
    ('{"cluster": {"ps": ["a:1"]}', [], 'TF_CONFIG is not a cluster description'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "evaluator", "index": 0}}', [],
     "job 'evaluator': main.py runs the tasks chief, worker and ps"),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"], "evaluator": ["c:3"]}, "task": {"type": "ps", "index": 0}}', [],
     'job evaluator: main.py runs the tasks chief, worker and ps'),
    ('{"cluster": {"worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}', [], 'at least one ps task'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 1}}', [],
     'task worker 1, but the cluster has 1 worker task'),
    ('{"cluster": {"ps": ["a"], "worker": ["b:2"]}, "task": {"type": "ps", "index": 0}}', [],
     "ps task address 'a': must be host:port"),
    ('{"cluster": {"ps": "a:1", "worker": ["b:2"]}, "task": {"type": "ps", "index": 0}}', [],
     "tasks for job 'ps' must be a list"),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "ps"}}',
     ['--ps_hosts=a:1', '--worker_hosts=b:2', '--job_name=ps'], 'both TF_CONFIG and --ps_hosts'),
    ('', ['--ps_hosts=a:1', '--worker_hosts=b:2', '--job_name=worker', '--task_index=2'],
     'task worker 2, but the cluster has 1 worker task'),
])
def test_a_cluster_that_cannot_work_is_refused_by_name(flags, monkeypatch, tf_config, arguments, message):
    monkeypatch.setenv('TF_CONFIG', tf_config)
    flags(*arguments)
    with pytest.raises(utils.UserError, match=message):
        main.cluster_task()


@pytest.mark.parametrize('arguments, message', [
    (['--ps_hosts=a:1', '--job_name=worker'], 'flags ps_hosts=.*: a cluster needs --ps_hosts, --worker_hosts and '
                                              '--job_name'),
    (['--ps_hosts=a:1', '--worker_hosts=b:2', '--job_name=chief'], 'flag --job_name=chief: value should be one of'),
])
def test_cluster_flags_that_cannot_work_are_refused_as_they_are_parsed(flags, arguments, message):
    with pytest.raises(utils.flags.IllegalFlagValueError, match=message):
        flags(*arguments)


def worker_graph(cluster, index, images, label_ids):
    """Worker index's graph of one synchronous step of the small model on its batch, its replication ops and its
    weights' averages."""
    graph = tf.Graph()
    with graph.as_default():
        place = ocr.replica_devices(cluster, '/job:worker/task:%d' % index)
        with v1.device(place):
            global_step = v1.train.get_or_create_global_step()
            batch = {'images': tf.constant(images), 'label_ids': tf.constant(label_ids)}
            training, opt, averages = ocr.training_graph(SMALL, batch, SGD, global_step,
                                                         ['/job:worker/task:%d/cpu:0' % index], place, replicas=2)
            start = ([v1.global_variables_initializer(), averages.restart(), opt.ready_for_local_init_op,
                      opt.chief_init_op] if index == 0 else [opt.ready_for_local_init_op, opt.local_step_init_op])
            averaged = [averages.average(v) for v in v1.trainable_variables()]
            tokens, runner = opt.get_init_tokens_op(), opt.get_chief_queue_runner()
    devices = {op.name: op.device for op in graph.get_operations()}
    return graph, training, start, tokens, runner, devices, global_step, averaged


@pytest.mark.slow
def test_a_synchronous_step_of_two_workers_is_one_step_of_one_process_on_their_combined_batch():
    """Two workers of 4 images each against one process with two towers on the 8 (tower k: worker k's images,
    so that batch normalisation sees the same images): the same update, so the same mean gradient, and the weights'
    averages moved once, by the chief."""
    cluster = loopback_cluster()
    spec = tf.train.ClusterSpec(cluster)
    servers = [tf.distribute.Server(spec, job, index) for job, index in (('ps', 0), ('worker', 0), ('worker', 1))]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 96, 1)).astype(np.uint8)
    label_ids = np.array([list(rng.integers(0, 10, 3)) + [-1] for _ in range(8)], np.int32)
    workers = [worker_graph(cluster, index, images[4 * index:4 * index + 4], label_ids[4 * index:4 * index + 4])
               for index in range(2)]
    sessions = [v1.Session(server.target, graph=graph, config=v1.ConfigProto(device_filters=['/job:ps', device]))
                for server, (graph, *_), device in zip(servers[1:], workers, ['/job:worker/task:0',
                                                                              '/job:worker/task:1'])]
    coordinator = v1.train.Coordinator()
    for op in workers[0][2]:
        sessions[0].run(op)
    uninitialised, _ = [sessions[1].run(op) for op in workers[1][2]]
    assert uninitialised.size == 0  # worker 1 sees the variables the chief initialised on the ps task
    sessions[0].run(workers[0][3])
    workers[0][4].create_threads(sessions[0], coord=coordinator, daemon=True, start=True)
    with workers[0][0].as_default():
        variables = v1.trainable_variables()
    before = sessions[0].run(variables)
    fetched = {}
    steps = [threading.Thread(target=lambda k=k: fetched.update({k: sessions[k].run(workers[k][1])})) for k in (0, 1)]
    for thread in steps:
        thread.start()
    for thread in steps:
        thread.join(120)
    assert sorted(fetched) == [0, 1]
    wait_for(lambda: not any(np.array_equal(average, start) for average, start in zip(  # the chief's token thread
        sessions[0].run(workers[0][7]), before)), explain=lambda: 'the averages did not move')  # steps, then averages
    after, averaged = sessions[0].run([variables, workers[0][7]])
    coordinator.request_stop()
    for session in sessions:
        session.close()
    devices = workers[1][5]
    assert devices['ocr/unit_1/kernel'] == devices['global_step'] == '/job:ps/task:0'
    assert devices['ocr/tower_0/unit_1/Conv2D'] == '/job:worker/task:1/device:CPU:0'

    with tf.Graph().as_default():
        global_step = v1.train.get_or_create_global_step()
        training, _, averages = ocr.training_graph(SMALL, {'images': tf.constant(images),
                                                           'label_ids': tf.constant(label_ids)},
                                                   SGD, global_step, ['/cpu:0', '/cpu:1'])
        with v1.Session(config=TWO_CPUS) as session:
            session.run(v1.global_variables_initializer())
            one_process = v1.trainable_variables()
            assert [v.op.name for v in one_process] == [v.op.name for v in variables]
            for variable, value in zip(one_process, before):
                variable.load(value, session)
            session.run(averages.restart())
            session.run(training)
            single, single_averaged = session.run([one_process, [averages.average(v) for v in one_process]])
    assert len(variables) == 13
    for variable, start, cluster_value, single_value, cluster_average, single_average in zip(
            variables, before, after, single, averaged, single_averaged):
        assert np.abs(cluster_value - start).max() > 0, variable.name
        np.testing.assert_allclose(cluster_value - start, single_value - start, rtol=1e-4, atol=1e-5,
                                   err_msg=variable.name)
        decay = 2 / 11  # min(0.9, (1 + step) / (10 + step)) at step 1
        np.testing.assert_allclose(cluster_average, decay * start + (1 - decay) * cluster_value, rtol=1e-4,
                                   atol=1e-5, err_msg=variable.name)
        np.testing.assert_allclose(cluster_average - start, single_average - start, rtol=1e-4, atol=1e-5,
                                   err_msg=variable.name)


STARTED = []  # the processes of the tasks the running test started


@pytest.fixture(autouse=True)
def no_task_outlives_its_test():
    """A test that fails while its tasks wait for each other (a ps task waits for its chief) kills them."""
    yield
    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()
    STARTED.clear()


def start_task(arguments, tf_config=None):
    """A task of a cluster as a launcher starts it: main.py --mode=train in the background, its output in a file."""
    environment = dict(USER_ENVIRONMENT, TF_CONFIG=json.dumps(tf_config)) if tf_config else USER_ENVIRONMENT
    output = open(os.path.join(arguments.output_dir, '%s.log' % arguments.name), 'a')
    STARTED.append(subprocess.Popen([sys.executable, os.path.join(REPO, 'main.py'), '--mode=train', *arguments.flags],
                                    stdout=output, stderr=subprocess.STDOUT, text=True, env=environment, cwd=REPO))
    return STARTED[-1]


class Task:
    def __init__(self, name, flags, output_dir, tf_config=None):
        self.name, self.flags, self.output_dir, self.tf_config = name, flags, output_dir, tf_config
        self.process = start_task(self, tf_config)

    @property
    def log(self):
        with open(os.path.join(self.output_dir, '%s.log' % self.name)) as file:
            return file.read()

    def wait_for(self, condition):
        """Waits until condition() holds while this task runs."""
        wait_for(lambda: condition() or self.process.poll() is not None, explain=lambda: self.log)
        assert self.process.poll() is None, self.log

    def restart(self):
        self.process = start_task(self, self.tf_config)


def finish(tasks, timeout=300):
    """Each task's exit code, once all have exited by themselves (killed after timeout)."""
    deadline = time.time() + timeout
    try:
        return [task.process.wait(max(1, deadline - time.time())) for task in tasks]
    finally:
        for task in tasks:
            if task.process.poll() is None:
                task.process.kill()


def training_flags(dataset, *extra):
    return ['--batch_size=8', '--validation_steps=20', '--save_steps=10', '--cluster_timeout=60',
            *SMALL_MODEL_FLAGS, *folders(dataset), *extra]


@pytest.mark.slow
def test_a_ps_and_two_workers_train_to_max_steps_a_killed_worker_rejoins_and_all_exit(dataset):
    """TF_CONFIG with a chief task and a worker task (the two workers) and a ps task; the worker is killed and
    started again. The worker gets its own --checkpoint_dir and --log_dir, to show that it writes nothing."""
    cluster = loopback_cluster(workers=1, chief=True)
    common = training_flags(dataset, '--max_steps=40')
    elsewhere = ['--checkpoint_dir=%s' % (dataset / 'not_the_chief'), '--log_dir=%s' % (dataset / 'not_the_chief_log')]
    tasks = [Task(job, common + (elsewhere if job == 'worker' else []), str(dataset),
                  {'cluster': cluster, 'task': {'type': job, 'index': 0}}) for job in ('ps', 'chief', 'worker')]
    ps, chief, worker = tasks
    checkpoints = dataset / 'checkpoint'
    worker.wait_for(lambda: (checkpoints / 'checkpoint').exists())  # step 10 saved: synchronous steps need both
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(30)
    worker.restart()
    worker.wait_for(lambda: 'training on 25 images' in worker.log)
    assert finish(tasks) == [0, 0, 0], [task.log for task in tasks]
    rejoined = worker.log.split('training on 25 images')[-1]  # 50 images, one half each
    assert 'step ' in rejoined and 'stopped at step 40' in rejoined, worker.log
    assert 'training on 25 images' in chief.log and 'step 40: saved checkpoint' in chief.log, chief.log
    assert 'validation accuracy' in chief.log and 'the chief has ended the training' in ps.log
    assert (checkpoints / 'architecture.json').exists() and (checkpoints / 'best' / 'best.json').exists()
    assert not (dataset / 'not_the_chief').exists() and not (dataset / 'not_the_chief_log').exists()
    result = run_cli('--mode=val', '--checkpoint=latest', *folders(dataset))
    assert result.returncode == 0 and result.stdout.strip().endswith('images=23'), result.stderr


@pytest.mark.slow
def test_a_port_in_use_and_an_unreachable_ps_end_in_clear_errors(dataset):
    ps, worker = ['127.0.0.1:%d' % port for port in free_ports(2)]
    with socket.socket() as holder:
        holder.bind(('', int(ps.rpartition(':')[2])))
        holder.listen()
        result = run_cli('--mode=train', '--job_name=ps', '--ps_hosts=%s' % ps, '--worker_hosts=%s' % worker)
    assert result.returncode == 2 and 'port %s is in use on this machine' % ps.rpartition(':')[2] in result.stderr
    started = time.time()
    result = run_cli(*training_flags(dataset, '--job_name=worker', '--ps_hosts=%s' % ps, '--worker_hosts=%s' % worker,
                                     '--cluster_timeout=2'))
    assert result.returncode == 2 and time.time() - started < 60
    assert 'ps task 0 at %s cannot be reached after --cluster_timeout=2 s' % ps in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_a_frozen_ps_task_or_an_address_that_is_no_tensorflow_server_ends_a_worker_after_the_timeout(dataset):
    """Each wait for another task is bounded by --cluster_timeout: a ps task stopped with SIGSTOP (its port still
    accepts connections) and a port held by a program that never answers end the chief's start in a clear error."""
    ps, worker = ['127.0.0.1:%d' % port for port in free_ports(2)]
    frozen = Task('ps', training_flags(dataset, '--job_name=ps', '--ps_hosts=%s' % ps, '--worker_hosts=%s' % worker),
                  str(dataset))
    try:
        frozen.wait_for(lambda: 'serving variables' in frozen.log)
        frozen.process.send_signal(signal.SIGSTOP)
        result = run_cli(*training_flags(dataset, '--job_name=worker', '--ps_hosts=%s' % ps,
                                         '--worker_hosts=%s' % worker, '--cluster_timeout=5'))
    finally:
        frozen.process.kill()
        frozen.process.wait()
    assert result.returncode == 1 and 'no answer from the cluster within' in result.stderr, \
        result.stderr
    silent, worker = ['127.0.0.1:%d' % port for port in free_ports(2)]
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', int(silent.rpartition(':')[2])))
        holder.listen()
        result = run_cli(*training_flags(dataset, '--job_name=worker', '--ps_hosts=%s' % silent,
                                         '--worker_hosts=%s' % worker, '--cluster_timeout=5'))
    assert result.returncode == 1 and 'no answer from the cluster within' in result.stderr, \
        result.stderr
    assert 'Traceback' not in result.stderr
