#!/usr/bin/env bash
# Rebuilds the shipped model (imgs/model/) from nothing: the twelve stages of imgs/model/README.md, each stage
# fine-tuning the model of the stage before, with the code each stage ran with. About 19 hours on 2 CPU cores.
#
#   bash tests/rebuild_shipped_model.sh [--dry-run] [--from-stage N] [WORK]
#
# WORK (default ~/ocr-rebuild; outside the checkout) receives everything: src/<commit>/, git worktrees of older
# code; stage<N>/, that stage's images, checkpoints and logs; stage<N>/model/, its exported model (stage12/model is
# the rebuilt imgs/model). The font packages the shipped stages drew with must be installed (the script checks).
# --from-stage N starts from stage N-1's model in WORK/stage<N-1>/model, or, where that is missing, from the one
# git holds (every stage but 9 was shipped). --dry-run prints the commands without running them.
# PYTHON (default: python) runs helper.py and main.py.
#
# The code: stages 1 and 2 draw their images with the helper.py of 0e40100 (748 fonts: before the font check);
# stages 1 to 11 train with the main.py of 241d07e (the --augment before stage 12's) and stages 3 to 11 draw with
# its helper.py; stage 12 runs the main.py and helper.py of 6e4de56 (the last --augment that faded contrast to
# 0.15). Commands in an old worktree use that commit's flag names.
set -euo pipefail

die() { echo "rebuild_shipped_model.sh: $*" >&2; exit 2; }

usage() {
  echo "usage: bash tests/rebuild_shipped_model.sh [--dry-run] [--from-stage N] [WORK]"
  echo "  WORK            folder for worktrees, images, checkpoints and models (default ~/ocr-rebuild)"
  echo "  --from-stage N  start from stage N-1's model (WORK/stage<N-1>/model, else the shipped one in git)"
  echo "  --dry-run       print the commands, run nothing"
}

work=$HOME/ocr-rebuild
from_stage=1
dry_run=0
work_given=0
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --from-stage) (($# >= 2)) || die "--from-stage needs a stage number"; from_stage=$2; shift ;;
    --from-stage=*) from_stage=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) ((!work_given)) || die "one work folder, not '$work' and '$1'"; work=$1; work_given=1 ;;
  esac
  shift
done
[[ $from_stage =~ ^([1-9]|1[0-2])$ ]] || die "--from-stage=$from_stage: a stage from 1 to 12"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(realpath -m -- "$work")
[[ $work/ != "$repo"/* ]] || die "$work is inside the checkout $repo, where pytest would collect the old commits' \
tests and git status would list 1.5 million images: choose a folder outside it"
python=${PYTHON:-python}

# The commit that shipped each stage; its imgs/model/ holds that stage's model. Stage 9 was never shipped.
declare -A shipped=([1]=06bf988 [2]=0e40100 [3]=0620624 [4]=c7ee22b [5]=d635b57 [6]=8ad5b39 [7]=1923b8e
  [8]=6f8a79b [10]=fd34066 [11]=241d07e [12]=5205515)
declare -A added=()   # worktrees added (or found) by this run
declare -A model=()   # the model folder of each stage
for stage in {1..12}; do model[$stage]=$work/stage$stage/model; done
old=$work/src/0e40100    # stages 1-2: helper.py
code=$work/src/241d07e   # stages 1-11: main.py; stages 3-11: helper.py
faint=$work/src/6e4de56  # stage 12: main.py and helper.py

mix60=--renderer=contest:12,captcha07:4,classic:4   # contest generator 60%: stages 8 and 9
mix70=--renderer=contest:14,captcha07:3,classic:3   # 70%: stages 6, 10, 11 and 12

quote() {  # the arguments as a shell would need them typed
  local arg words=()
  for arg; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then words+=("$arg"); else words+=("'${arg//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}

shown_dir=
run_in() {  # run_in DIR COMMAND...: prints the command (and a cd when DIR changes), then runs it unless --dry-run
  local dir=$1
  shift
  if [[ $dir != "$shown_dir" ]]; then
    echo "cd $(quote "$dir")"
    shown_dir=$dir
  fi
  quote "$@"
  if ((!dry_run)); then (cd "$dir" && "$@"); fi
}

worktree() {  # worktree COMMIT: a checkout of COMMIT in WORK/src/COMMIT
  local commit=$1
  [[ -z ${added[$commit]:-} ]] || return 0
  added[$commit]=1
  [[ -e $work/src/$commit/.git ]] || run_in "$repo" git worktree add --detach "$work/src/$commit" "$commit"
}

synth() { local dir=$1; shift; run_in "$dir" "$python" helper.py --mode=synth "$@"; }
train() { local dir=$1; shift; run_in "$dir" "$python" main.py --mode=train "$@"; }
export_to() { local dir=$1 stage=$2; shift 2; run_in "$dir" "$python" main.py --mode=export "$@" \
  --export_dir="${model[$stage]}" --overwrite; }

stage1() {
  local s=$work/stage1 dejavu='--font_files=/usr/share/fonts/truetype/dejavu/*.ttf'
  synth "$old" --renderer=classic "$dejavu" --out_dir="$s/train" --num_images=600000 --seed=11
  synth "$old" --renderer=classic "$dejavu" --out_dir="$s/val" --num_images=2000 --seed=13
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest" --log_dir="$s/log/contest" \
    --image_height=40 --image_width=120 --max_stepsize=16 --rnn_cell=gru --bidirectional \
    --batch_size=128 --precision=bf16 --lr_schedule=cosine --warmup_steps=300 \
    --decay_steps=20000 --max_steps=20000 --validation_steps=1000 --save_steps=500
  export_to "$code" 1 --checkpoint_dir="$s/checkpoint/contest"
}

stage2() {
  local s=$work/stage2
  synth "$old" --out_dir="$s/train" --num_images=300000 --seed=21 --blank_share=0.02
  synth "$old" --out_dir="$s/val" --num_images=2000 --seed=23 --blank_share=0.02
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest3" --log_dir="$s/log/contest3" --init_from="${model[1]}" --augment \
    --batch_size=64 --lr_schedule=cosine --warmup_steps=200 --initial_learning_rate=0.0005 \
    --decay_steps=4500 --max_steps=4500 --validation_steps=500 --save_steps=250
  export_to "$code" 2 --checkpoint_dir="$s/checkpoint/contest3"
}

stage3() {
  local s=$work/stage3
  synth "$code" --out_dir="$s/train" --num_images=150000 --seed=41 --blank_share=0.02
  synth "$code" --out_dir="$s/val" --num_images=2000 --seed=23 --blank_share=0.02
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest5" --log_dir="$s/log/contest5" --init_from="${model[2]}" --augment \
    --batch_size=64 --lr_schedule=cosine --warmup_steps=100 --initial_learning_rate=0.0003 \
    --decay_steps=2500 --max_steps=2500 --validation_steps=500 --save_steps=250
  export_to "$code" 3 --checkpoint_dir="$s/checkpoint/contest5"
}

stage4() {
  local s=$work/stage4 mix=--renderer=contest:6,captcha07:2,classic:2
  synth "$code" "$mix" --blank_share=0.02 --out_dir="$s/train" --num_images=100000 --seed=51
  synth "$code" "$mix" --blank_share=0.02 --out_dir="$s/val" --num_images=2000 --seed=53
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest6" --log_dir="$s/log/contest6" --init_from="${model[3]}" --augment \
    --batch_size=64 --lr_schedule=cosine --warmup_steps=100 --initial_learning_rate=0.0003 \
    --decay_steps=3500 --max_steps=2500 --validation_steps=500 --save_steps=250
  export_to "$code" 4 --checkpoint_dir="$s/checkpoint/contest6"
}

stage5() {
  local s=$work/stage5 mix=--renderer=contest:8,captcha07:1,classic:1
  synth "$code" "$mix" --blank_share=0.02 --out_dir="$s/train" --num_images=100000 --seed=61
  synth "$code" "$mix" --blank_share=0.02 --out_dir="$s/val" --num_images=2000 --seed=63
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest7" --log_dir="$s/log/contest7" --init_from="${model[4]}" --augment \
    --batch_size=64 --lr_schedule=cosine --warmup_steps=100 --initial_learning_rate=0.0003 \
    --decay_steps=3500 --max_steps=3500 --validation_steps=500 --save_steps=250
  export_to "$code" 5 --checkpoint_dir="$s/checkpoint/contest7"
}

stage6() {
  local s=$work/stage6 mix=$mix70
  synth "$code" "$mix" --blank_share=0.02 --out_dir="$s/train" --num_images=300000 --seed=81
  synth "$code" "$mix" --blank_share=0.02 --out_dir="$s/val" --num_images=2000 --seed=83
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest8" --log_dir="$s/log/contest8" --init_from="${model[5]}" --augment \
    --precision=bf16 --initial_learning_rate=0.0003 --max_steps=12000 --validation_steps=1000 --save_steps=500
  synth "$code" "$mix" --blank_share=0.04 --plain_share=0.5 --out_dir="$s/plain" --num_images=40000 --seed=91
  train "$code" --train_dir="$s/plain" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest9" --log_dir="$s/log/contest9" \
    --init_from="$s/checkpoint/contest8/best" --augment \
    --precision=bf16 --initial_learning_rate=0.0001 --max_steps=1500 --validation_steps=1500 --save_steps=500
  export_to "$code" 6 --checkpoint_dir="$s/checkpoint/contest9"
}

stage7() {
  local s=$work/stage7
  synth "$code" --renderer=contest:14,captcha07:2,classic:4 --blank_share=0.03 --plain_share=0.5 \
    --out_dir="$s/train" --num_images=250000 --seed=101
  synth "$code" --renderer=contest:14,captcha07:2,classic:4 --blank_share=0.03 --plain_share=0.5 \
    --out_dir="$s/val" --num_images=2000 --seed=103
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest10" --log_dir="$s/log/contest10" --init_from="${model[6]}" --augment \
    --precision=bf16 --initial_learning_rate=0.0002 --max_steps=10000 --validation_steps=1000 --save_steps=500
  synth "$code" --renderer=contest:10,captcha07:5,classic:5 --blank_share=0.03 --plain_share=0.5 \
    --out_dir="$s/balance" --num_images=40000 --seed=111
  train "$code" --train_dir="$s/balance" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest11" --log_dir="$s/log/contest11" \
    --init_from="$s/checkpoint/contest10/best" --augment \
    --precision=bf16 --initial_learning_rate=0.0001 --max_steps=1500 --validation_steps=1500 --save_steps=500
  export_to "$code" 7 --checkpoint_dir="$s/checkpoint/contest11"
}


stage8() {
  local s=$work/stage8
  synth "$code" "$mix60" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/val" --num_images=2000 --seed=123
  synth "$code" "$mix60" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/train" --num_images=200000 --seed=121
  train "$code" --train_dir="$s/train" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest12" --log_dir="$s/log/contest12" --init_from="${model[7]}" \
    --image_height=48 --image_width=144 --max_stepsize=20 --augment \
    --precision=bf16 --initial_learning_rate=0.0002 --max_steps=12000 --validation_steps=1000 --save_steps=500
  synth "$code" "$mix60" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/train2" --num_images=150000 --seed=131
  train "$code" --train_dir="$s/train2" --val_dir="$s/val" \
    --checkpoint_dir="$s/checkpoint/contest13" --log_dir="$s/log/contest13" \
    --init_from="$s/checkpoint/contest12/best" --augment \
    --precision=bf16 --initial_learning_rate=0.0001 --max_steps=6000 --validation_steps=1000 --save_steps=500
  export_to "$code" 8 --checkpoint_dir="$s/checkpoint/contest13" --export_formats=saved_model
}

val9=$work/stage9/val   # stages 10 to 12 validate on stage 9's set

draw_val9() {
  synth "$code" "$mix60" --blank_share=0.03 --plain_share=0.5 --out_dir="$val9" --num_images=2000 --seed=123
}

stage9() {
  local s=$work/stage9
  draw_val9
  synth "$code" "$mix60" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/train" --num_images=200000 --seed=141
  train "$code" --train_dir="$s/train" --val_dir="$val9" \
    --checkpoint_dir="$s/checkpoint/contest14" --log_dir="$s/log/contest14" --init_from="${model[8]}" --augment \
    --precision=bf16 --initial_learning_rate=0.00015 --max_steps=15000 --validation_steps=1000 --save_steps=500
  synth "$code" "$mix60" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/train2" --num_images=150000 --seed=151
  train "$code" --train_dir="$s/train2" --val_dir="$val9" \
    --checkpoint_dir="$s/checkpoint/contest15" --log_dir="$s/log/contest15" --init_from="$s/checkpoint/contest14" \
    --checkpoint=latest --augment --precision=bf16 --initial_learning_rate=0.00007 --max_steps=6000 \
    --validation_steps=1000 --save_steps=500
  export_to "$code" 9 --checkpoint_dir="$s/checkpoint/contest15" --export_formats=saved_model
}

stage10() {
  local s=$work/stage10
  synth "$code" "$mix70" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/train" --num_images=150000 --seed=161
  train "$code" --train_dir="$s/train" --val_dir="$val9" \
    --checkpoint_dir="$s/checkpoint/contest16" --log_dir="$s/log/contest16" --init_from="${model[9]}" --augment \
    --precision=bf16 --initial_learning_rate=0.00005 --max_steps=6000 --validation_steps=1000 --save_steps=500
  export_to "$code" 10 --checkpoint_dir="$s/checkpoint/contest16" --checkpoint=latest --export_formats=saved_model
}

stage11() {
  local s=$work/stage11
  synth "$code" "$mix70" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/train" --num_images=200000 --seed=171
  train "$code" --train_dir="$s/train" --val_dir="$val9" \
    --checkpoint_dir="$s/checkpoint/contest17" --log_dir="$s/log/contest17" --init_from="${model[10]}" --augment \
    --precision=bf16 --initial_learning_rate=0.0001 --max_steps=12000 --validation_steps=1000 --save_steps=500
  export_to "$code" 11 --checkpoint_dir="$s/checkpoint/contest17" --checkpoint=latest --export_formats=saved_model
}

stage12() {  # the --augment that fades contrast down to 0.15
  local s=$work/stage12
  synth "$faint" "$mix70" --blank_share=0.03 --plain_share=0.5 --out_dir="$s/train" --num_images=200000 --seed=201
  train "$faint" --train_dir="$s/train" --val_dir="$val9" \
    --checkpoint_dir="$s/checkpoint/contest23" --log_dir="$s/log/contest23" --init_from="${model[11]}" \
    --image_height=48 --image_width=180 --max_stepsize=24 --augment \
    --precision=fp32 --initial_learning_rate=0.0001 --max_steps=5000 --validation_steps=1000 --save_steps=500 \
    --moving_average_decay=0
  export_to "$faint" 12 --checkpoint_dir="$s/checkpoint/contest23" --checkpoint=latest --export_formats=saved_model
}

# The Debian font packages the shipped stages drew with: with them, helper.py synth logs "drawing with 748 TrueType
# or OpenType fonts" (746 from stage 3 on, the font check leaving two out). Other fonts draw other images.
fonts=(fonts-dejavu-core fonts-dejavu-extra fonts-comic-neue fonts-dkg-handwriting
  fonts-breip fonts-bwht fonts-cabinsketch fonts-dancingscript fonts-dosis fonts-eurofurence fonts-femkeklaver
  fonts-humor-sans fonts-jura fonts-kaushanscript fonts-kristi fonts-leckerli-one fonts-lobster fonts-lobstertwo
  fonts-monofur fonts-rufscript fonts-bebas-neue fonts-gnutypewriter fonts-sil-charis fonts-sil-gentiumplus
  fonts-sil-andika fonts-liberation2 fonts-freefont-ttf fonts-croscore fonts-crosextra-carlito
  fonts-crosextra-caladea fonts-roboto-unhinted fonts-open-sans fonts-lato fonts-cantarell fonts-hack
  fonts-firacode fonts-inconsolata fonts-linuxlibertine fonts-urw-base35 fonts-texgyre fonts-comfortaa
  fonts-quicksand fonts-mplus fonts-ecolier-court fonts-averia-gwf fonts-averia-sans-gwf fonts-averia-serif-gwf
  fonts-cherrybomb fonts-fantasque-sans fonts-go fonts-jetbrains-mono fonts-mononoki fonts-b612 fonts-inter
  fonts-karla fonts-play fonts-agave fonts-ebgaramond fonts-oldstandard fonts-paratype fonts-yrsa-rasa
  fonts-fanwood fonts-goudybookletter fonts-lindenhill fonts-prociono fonts-havana fonts-levien-typoscript
  fonts-isabella fonts-oflb-euterpe fonts-staypuft fonts-tomsontalks fonts-dustin fonts-beteckna fonts-junicode
  fonts-klee fonts-yanone-kaffeesatz fonts-league-spartan fonts-adf-accanthis fonts-adf-gillius
  fonts-adf-universalis fonts-adf-verana fonts-adf-switzera fonts-adf-baskervald fonts-adf-ikarius
  fonts-adf-romande fonts-adf-tribun fonts-adf-berenis fonts-adf-oldania fonts-adf-irianis fonts-adf-libris
  fonts-noto-mono fonts-manrope fonts-oxygen fonts-terminus-otb fonts-ecolier-lignes-court fonts-quattrocento
  fonts-rocknroll fonts-sora)

check_fonts() {  # names the missing font packages: refuses to run without them, or notes them in a dry run
  command -v dpkg-query >/dev/null || { echo "# note: no dpkg-query to check the font packages with"; return 0; }
  local missing=() package
  local -A installed=()
  # shellcheck disable=SC2016  # dpkg-query's format, not the shell's
  while read -r package; do installed[$package]=1; done < <(
    dpkg-query -W -f='${db:Status-Abbrev}${Package}\n' "${fonts[@]}" 2>/dev/null | sed -n 's/^ii *//p')
  for package in "${fonts[@]}"; do [[ -n ${installed[$package]:-} ]] || missing+=("$package"); done
  ((${#missing[@]})) || return 0
  local message="${#missing[@]} of the font packages the shipped stages had are missing (other fonts draw other \
images): apt-get install --no-install-recommends ${missing[*]}"
  if ((dry_run)); then echo "# note: $message"; else die "$message"; fi
}

# What each stage does and how long it took (imgs/model/README.md's table and the times of its runs).
about=(''
  'from scratch: 600,000 classic images in 22 DejaVu fonts, 20,000 steps of 128 at 40x120 (100 min training)'
  'from stage 1: 300,000 captcha07/classic images in 748 fonts, 4,500 steps (23 min drawing, 100 training)'
  'from stage 2: 150,000 images of that kind in 746 fonts, 2,500 steps (15 min drawing, 60 training)'
  'from stage 3: 100,000 images, contest generator 60%, 2,500 steps (10 min drawing, about 80 training)'
  'from stage 4: 100,000 images, contest generator 80%, 3,500 steps (10 min drawing, 100 training)'
  'from stage 5: 300,000 images, then 40,000 with plain blanks; 12,000 + 1,500 steps (18 min drawing, 85 training)'
  'from stage 6: 250,000 images, then 40,000 at 50/25/25; 10,000 + 1,500 steps (13 min drawing, 71 training)'
  'from stage 7, at 48x144: 200,000 + 150,000 images; 12,000 + 6,000 steps (14 min drawing, 80 training)'
  'from stage 8: 200,000 + 150,000 images; 15,000 + 6,000 steps (19 min drawing, 87 training)'
  'from stage 9: 150,000 images, 6,000 steps, the last step shipped (5 min drawing, 27 training)'
  'from stage 10: 200,000 images, 12,000 steps, the last step shipped (7 min drawing, 62 training)'
  'from stage 11, at 48x180, faint text augmented: 200,000 images, 5,000 steps (20 min drawing, 80 training)')

# Refuse to mix a new run with an old one: main.py will not train into a checkpoint folder that holds a model.
for ((stage = from_stage; stage <= 12; stage++)); do
  if [[ -e $work/stage$stage ]]; then
    message="$work/stage$stage already exists: remove it, or start after it with --from-stage $((stage + 1))"
    if ((dry_run)); then echo "# note: $message"; else die "$message"; fi
  fi
done

check_fonts
if ((dry_run)); then echo "# dry run: the commands that rebuild imgs/model in $work from stage $from_stage"; fi
before=$((from_stage - 1))   # the stage whose model this run starts from (0: none)
if ((before)) && [[ ! -e ${model[$before]}/checkpoint && -z ${shipped[$before]:-} ]]; then
  die "${model[$before]}: no model, and stage $before was never shipped: rebuild it (--from-stage $before)"
fi
((from_stage > 2)) || worktree 0e40100
worktree 241d07e
worktree 6e4de56
if ((before)) && [[ ! -e ${model[$before]}/checkpoint ]]; then
  echo "# stage $before: the shipped model of commit ${shipped[$before]}"
  worktree "${shipped[$before]}"
  model[$before]=$work/src/${shipped[$before]}/imgs/model
fi
if ((from_stage > 9)) && [[ ! -e $val9/labels.txt ]]; then
  echo "# stage 9's validation set, which stages 10 to 12 validate on"
  draw_val9
fi
for ((stage = from_stage; stage <= 12; stage++)); do
  echo "# stage $stage: ${about[$stage]}"
  "stage$stage"
done
echo "# done: ${model[12]} is the rebuilt imgs/model; read the held-out sets with it as imgs/model/README.md says"
