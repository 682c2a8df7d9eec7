"""Compares the RNN variants on the same generated data and step budget; prints README's markdown table.

    python tests/rnn_variants.py --work_dir=/tmp/rnn_variants

For each --rnn_cell, uni- and bidirectional: trains with main.py for --steps steps, validates with --mode=val and
counts the model's trainable parameters. Not a test: pytest does not collect it.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import cnn_lstm_otc_ocr as ocr  # noqa: E402
import utils  # noqa: E402

CELLS = ['lstm', 'gru', 'hlstm', 'rhn', 'nlstm']
MODEL_FLAGS = {'image_height': 32, 'image_width': 96, 'max_stepsize': 12, 'image_channel': 1}


def run(script, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                            cwd=REPO)
    if result.returncode:
        sys.exit('%s %s failed:\n%s' % (script, ' '.join(args), result.stderr[-3000:]))
    return result.stdout


def make_data(work_dir, train_images, val_images):
    for name, count, seed in (('train', train_images, 1), ('val', val_images, 2)):
        folder = os.path.join(work_dir, name)
        if not os.path.isdir(folder):
            run('helper.py', '--mode=synth', '--out_dir=%s' % folder, '--num_images=%d' % count, '--seed=%d' % seed)


def parameters(cell, bidirectional):
    arch = utils.Architecture(charset='0123456789+-*()', cnn_count=4, out_channels=64, num_hidden=128,
                            leakiness=0.01, rnn_cell=cell, rnn_layers=2, bidirectional=bidirectional, rhn_depth=3,
                            **MODEL_FLAGS)
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.uint8, [None, arch.image_height, arch.image_width, 1])
        ocr.Recogniser('infer', arch).logits(images)
        return sum(v.shape.num_elements() for v in tf.compat.v1.trainable_variables())


def measure(work_dir, cell, bidirectional, steps, batch_size):
    checkpoint_dir = os.path.join(work_dir, 'checkpoint_%s_%s' % (cell, 'bi' if bidirectional else 'uni'))
    common = ['--checkpoint_dir=%s' % checkpoint_dir, '--val_dir=%s' % os.path.join(work_dir, 'val'),
              '--batch_size=%d' % batch_size]
    if not os.path.isdir(checkpoint_dir):
        log = run('main.py', '--mode=train', '--train_dir=%s' % os.path.join(work_dir, 'train'),
                  '--log_dir=%s' % os.path.join(work_dir, 'log'), '--max_steps=%d' % steps,
                  '--validation_steps=%d' % steps, '--save_steps=%d' % steps, '--rnn_cell=%s' % cell,
                  '--bidirectional=%s' % bidirectional, *['--%s=%s' % item for item in MODEL_FLAGS.items()],
                  *common)
        speeds = [float(s) for s in re.findall(r'([\d.]+) images/s', log)][2:]
        with open(os.path.join(checkpoint_dir, 'speed.txt'), 'w') as file:
            file.write('%.1f\n' % statistics.median(speeds))
    with open(os.path.join(checkpoint_dir, 'speed.txt')) as file:
        speed = float(file.read())
    last = run('main.py', '--mode=val', *common).strip().splitlines()[-1]
    accuracy, cer = re.match(r'accuracy=([\d.]+) cer=([\d.]+)', last).groups()
    return speed, float(accuracy), float(cer)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work_dir', required=True, help='data and checkpoints; a rerun reuses what is there')
    parser.add_argument('--train_images', type=int, default=3000)
    parser.add_argument('--val_images', type=int, default=500)
    parser.add_argument('--steps', type=int, default=1500)
    parser.add_argument('--batch_size', type=int, default=16)
    args = parser.parse_args()
    tf.compat.v1.disable_eager_execution()
    make_data(args.work_dir, args.train_images, args.val_images)
    print('%d contest-style training images, %d validation images, %s, %d steps of batch %d\n' % (
        args.train_images, args.val_images, ' '.join('--%s=%s' % item for item in MODEL_FLAGS.items()),
        args.steps, args.batch_size))
    print('| --rnn_cell | --bidirectional | parameters | training images/s | val accuracy | val CER |')
    print('| --- | --- | ---: | ---: | ---: | ---: |')
    for cell in CELLS:
        for bidirectional in (False, True):
            speed, accuracy, cer = measure(args.work_dir, cell, bidirectional, args.steps, args.batch_size)
            print('| %s | %s | %s | %.0f | %.4f | %.4f |' % (cell, str(bidirectional).lower(),
                                                           format(parameters(cell, bidirectional), ','),
                                                           speed, accuracy, cer), flush=True)


if __name__ == '__main__':
    main()
