"""Time to accuracy: how long a training recipe takes, from scratch, to read 99% and 99.75% of held-out images of a
kind it never saw. A script, not a test (pytest collects only test_*.py):

    python tests/time_to_accuracy.py                          # rotated and contest x two recipes, 20 minutes each
    python tests/time_to_accuracy.py --renderers=classic --recipes=readme --minutes=5

For each renderer (`helper.py --mode=synth`'s, or tests/other_renderers.py's styles in --fonts) it draws
--train_images, --val_images and --test_images (seeded), then trains `main.py --mode=train` with each recipe for
--minutes of wall-clock time (bf16 where the CPU has bf16 instructions), reading the validation accuracy from its
log as it comes, and stops it with SIGINT (it saves); with --max_minutes, main.py's own time budget ends it. Per run: minutes and steps to 99% and to 99.75% validation accuracy, the lowest validation accuracy after
first reaching 99%, the best, and the best checkpoint's accuracy on the test images. Runs go one after another; the
machine may be shared, so compare recipes by the ratio of their times within one run of this script.
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from conftest import REPO, USER_ENVIRONMENT  # conftest puts the repository on sys.path
import other_renderers
import utils

# The recipes: main.py flags beside the folders. `original` is the original project's training (README's flag set),
# `readme` the command of README's "Training on your own data".
RECIPES = {'original': list(utils.ORIGINAL_FLAGS), 'readme': ['--augment']}
HELPER_RENDERERS = ('classic', 'contest', 'captcha07')  # helper.py --mode=synth --renderer=...
OTHER_RENDERERS = ('rotated', 'strings', 'captcha', 'plates', 'meter')  # tests/other_renderers.py --style=...
RENDERERS = HELPER_RENDERERS + OTHER_RENDERERS
CHARSETS = {'plates': other_renderers.PLATE_CHARSET, 'meter': other_renderers.METER_CHARSET}  # main.py's --charset where it is not the contest's
THRESHOLDS = (0.99, 0.9975)
VALIDATION = re.compile(r'^step (\d+): validation accuracy ([0-9.]+)')


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--renderers', default='rotated,contest',
                        help='comma-separated, of: %s (helper.py\'s), %s (tests/other_renderers.py\'s)'
                        % (', '.join(HELPER_RENDERERS), ', '.join(OTHER_RENDERERS)))
    parser.add_argument('--fonts', default='/usr/share/fonts/truetype/dejavu/*.ttf',
                        help='font files the rotated, strings and plates renderers draw with (a glob)')
    parser.add_argument('--recipes', default=','.join(RECIPES), help='comma-separated, of: %s' % ', '.join(RECIPES))
    parser.add_argument('--flags', action='append', default=[], metavar='NAME=FLAGS',
                        help='one more recipe: a name and main.py flags, e.g. "fast=--batch_size=64 --augment"')
    parser.add_argument('--minutes', type=float, default=20, help='wall-clock minutes of each training')
    parser.add_argument('--max_minutes', type=float, default=0,
                        help='give each training this time budget (main.py --max_minutes) instead of stopping it '
                             'after --minutes')
    parser.add_argument('--train_images', type=int, default=20000)
    parser.add_argument('--val_images', type=int, default=1000)
    parser.add_argument('--test_images', type=int, default=2000)
    parser.add_argument('--validation_steps', type=int, default=250)
    parser.add_argument('--seed', type=int, default=71, help='of the drawn images (train, val and test differ)')
    parser.add_argument('--data_dir', default='',
                        help='keep the drawn images here, one folder per renderer, and reuse them on the next run; '
                             'each training\'s log is written there too (default: a temporary folder, removed at '
                             'the end)')
    args = parser.parse_args(argv)
    unknown = [name for name in args.recipes.split(',') if name and name not in RECIPES]
    if unknown:
        parser.error('--recipes: unknown %s (choose from %s, or add one with --flags)' % (
            ', '.join(unknown), ', '.join(RECIPES)))
    unknown = [name for name in args.renderers.split(',') if name not in RENDERERS]
    if unknown:
        parser.error('--renderers: unknown %s (choose from %s)' % (', '.join(unknown), ', '.join(RENDERERS)))
    recipes = {name: RECIPES[name] for name in args.recipes.split(',') if name}
    for recipe in args.flags:
        name, equals, flags = recipe.partition('=')
        if not (name and equals):
            parser.error('--flags=%s: give a name and main.py flags, NAME=FLAGS' % recipe)
        recipes[name] = flags.split()
    args.recipes, args.renderers = recipes, args.renderers.split(',')
    fonts = sorted(glob.glob(args.fonts))
    if {'rotated', 'strings', 'plates'} & set(args.renderers) and not fonts:
        parser.error('--fonts=%s: no font files there (the rotated, strings and plates renderers draw with them)'
                     % args.fonts)
    args.fonts = fonts
    return args


def run(script, *arguments):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *arguments], capture_output=True,
                            text=True, env=USER_ENVIRONMENT)
    if result.returncode:
        raise SystemExit('%s %s failed:\n%s' % (script, ' '.join(arguments), result.stderr))
    return result.stdout


def draw(folder, renderer, args):
    """train/, val/ and test/ of one renderer, seeded; a set already drawn there is kept."""
    for offset, (name, count) in enumerate((('train', args.train_images), ('val', args.val_images),
                                            ('test', args.test_images))):
        out_dir = os.path.join(folder, name)
        if os.path.isdir(out_dir) and sum(image.endswith('.png') for image in os.listdir(out_dir)) >= count:
            continue
        common = ['--out_dir=%s' % out_dir, '--num_images=%d' % count, '--seed=%d' % (args.seed + offset)]
        if renderer in OTHER_RENDERERS:
            fonts = ['--fonts', *args.fonts] if args.fonts else []
            run(os.path.join('tests', 'other_renderers.py'), '--style=%s' % renderer, *common, *fonts)
        else:
            run('helper.py', '--mode=synth', '--renderer=%s' % renderer, *common)


def train(data, work, flags, args):
    """Trains for args.minutes (or with the budget args.max_minutes); the validations as (minutes since the start,
    step, accuracy)."""
    command = [sys.executable, os.path.join(REPO, 'main.py'), '--mode=train', '--train_dir=%s/train' % data,
               '--val_dir=%s/val' % data, '--checkpoint_dir=%s/checkpoint' % work, '--log_dir=%s/log' % work,
               '--validation_steps=%d' % args.validation_steps, '--save_steps=%d' % args.validation_steps,
               *(['--precision=bf16'] if utils.cpu_has_bf16() else []), *flags,
               *(['--max_minutes=%g' % args.max_minutes] if args.max_minutes else [])]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=USER_ENVIRONMENT)
    minutes = args.max_minutes + 5 if args.max_minutes else args.minutes  # a budget ends the training itself
    stop = threading.Timer(minutes * 60, lambda: process.poll() is None and process.send_signal(signal.SIGINT))
    stop.start()
    validations, log = [], []
    for line in process.stdout:
        log.append(line)
        match = VALIDATION.match(line)
        if match:
            validations.append(((time.perf_counter() - started) / 60, int(match.group(1)), float(match.group(2))))
            print('    %5.1f min  step %6d  validation %.2f%%' % (validations[-1][0], validations[-1][1],
                                                                  100 * validations[-1][2]), flush=True)
    stop.cancel()
    if args.data_dir:
        with open(os.path.join(args.data_dir, os.path.basename(work) + '.log'), 'w') as saved:
            saved.writelines(log)
    if process.wait() not in (0, 128 + signal.SIGINT):
        raise SystemExit('training failed:\n' + ''.join(log[-30:]))
    return validations


def summary(validations, test_accuracy):
    """minutes and step to each threshold, the lowest validation after first reaching 99%, the best."""
    figures = {}
    for threshold in THRESHOLDS:
        first = next((v for v in validations if v[2] >= threshold), None)
        figures[threshold] = '%.1f min (step %d)' % first[:2] if first else 'not reached'
    reached = [index for index, v in enumerate(validations) if v[2] >= THRESHOLDS[0]]
    lowest = min(v[2] for v in validations[reached[0]:]) if reached else None
    best = max((v[2] for v in validations), default=0.0)
    return [figures[THRESHOLDS[0]], figures[THRESHOLDS[1]], '%.2f%%' % (100 * lowest) if reached else '-',
            '%.2f%%' % (100 * best), '%.2f%%' % (100 * test_accuracy)]


def main(argv):
    args = parse_args(argv)
    print('time to accuracy: %g minutes a training%s, %d train / %d val / %d test images; %d cores%s' % (
        args.max_minutes or args.minutes, ' (its --max_minutes)' if args.max_minutes else '', args.train_images, args.val_images, args.test_images, os.cpu_count(),
        ', bf16' if utils.cpu_has_bf16() else ''), flush=True)
    rows = []
    work_dir = tempfile.mkdtemp(prefix='ocr-time-to-accuracy-')
    try:
        for renderer in args.renderers:
            data = os.path.join(args.data_dir or work_dir, renderer)
            print('drawing %s images...' % renderer, flush=True)
            draw(data, renderer, args)
            for name, flags in args.recipes.items():
                print('  %s on %s: %s' % (name, renderer, ' '.join(flags)), flush=True)
                work = os.path.join(work_dir, '%s-%s' % (renderer, name))
                charset = ['--charset=%s' % CHARSETS[renderer]] if renderer in CHARSETS else []
                validations = train(data, work, charset + flags, args)
                tested = run('main.py', '--mode=val', '--checkpoint_dir=%s/checkpoint' % work,
                             '--val_dir=%s/test' % data)
                accuracy = float(re.search(r'accuracy=([0-9.]+)', tested).group(1))
                rows.append([renderer, name] + summary(validations, accuracy))
                shutil.rmtree(work)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print('\n| renderer | recipe | to 99% | to 99.75% | lowest after 99% | best validation | test |\n'
          '| --- | --- | --- | --- | --- | --- | --- |')
    for row in rows:
        print('| %s |' % ' | '.join(row))


if __name__ == '__main__':
    main(sys.argv[1:])
