#!/bin/sh
# Alternating before/after conversions of /work/data/chatglm3-1b to q4_k_m (2 threads, shared VM).
# "ref" = the numpy reference quantizer (the code before this change: kquants.quantize_fast
# replaced by QUANTIZE[kind]); "fast" = glmcpu convert as it now is. Appends to convert_runs.txt.
set -e
OUT=${OUT:-/tmp/kqq}
REF='import sys; from glmcpu import kquants as KQ; KQ.quantize_fast = lambda k, x: KQ.QUANTIZE[k](x); from glmcpu.cli import main; sys.exit(main(sys.argv[1:]))'
for i in $(seq ${FIRST:-1} $((${FIRST:-1} + ${PAIRS:-2} - 1))); do
  for v in ref fast; do
    echo "## $v run $i  $(date -u +%H:%M:%S)  load: $(cut -d' ' -f1-3 /proc/loadavg)" >> convert_runs.txt
    if [ $v = ref ]; then
      /usr/bin/time -f "wall %e s  user %U s  sys %S s  cpu %P  maxrss %M KB" -a -o convert_runs.txt \
        python -c "$REF" convert /work/data/chatglm3-1b -o $OUT/$v.glmq --dtype q4_k_m -q
    else
      /usr/bin/time -f "wall %e s  user %U s  sys %S s  cpu %P  maxrss %M KB" -a -o convert_runs.txt \
        glmcpu convert /work/data/chatglm3-1b -o $OUT/$v.glmq --dtype q4_k_m -q
    fi
  done
  cmp $OUT/ref.glmq $OUT/fast.glmq && echo "pair $i: files identical ($(sha256sum $OUT/fast.glmq | cut -c1-16))" >> convert_runs.txt
done
