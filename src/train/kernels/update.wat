;; Per-element optimiser updates for melo's worker threads (src/train/update-kernel.ts), compiled to
;; update.wasm by scripts/build-wasm.ts. The arithmetic is exactly that of the JavaScript reference in
;; src/train/optimizer.ts: float32 values promoted to float64, the same operations in the same order, each
;; stored value rounded to float32 once (f32x4.demote_f64x2_zero rounds to nearest even, as a store into a
;; Float32Array does). So both paths give bit-identical parameters and buffers. Two values per iteration
;; (f64x2); a last odd value goes through the same code with a one-lane load and store.
;;
;; Arguments are byte offsets into the imported shared memory and an element count.
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; m = f32(b1·m + k1·g); v = f32(b2·v + (k2·g)·g); p = f32(f32(p·decay) − stepSize·m / (√v·ic2 + eps))
  (func (export "adamw")
    (param $p i32) (param $g i32) (param $m i32) (param $v i32) (param $count i32)
    (param $b1 f64) (param $b2 f64) (param $k1 f64) (param $k2 f64)
    (param $stepSize f64) (param $ic2 f64) (param $eps f64) (param $decay f64)
    (local $i i32) (local $at i32) (local $pairs i32)
    (local $vb1 v128) (local $vb2 v128) (local $vk1 v128) (local $vk2 v128)
    (local $vss v128) (local $vic2 v128) (local $veps v128) (local $vdec v128)
    (local $gv v128) (local $mv v128) (local $vv v128) (local $pv v128)
    (local.set $vb1 (f64x2.splat (local.get $b1)))
    (local.set $vb2 (f64x2.splat (local.get $b2)))
    (local.set $vk1 (f64x2.splat (local.get $k1)))
    (local.set $vk2 (f64x2.splat (local.get $k2)))
    (local.set $vss (f64x2.splat (local.get $stepSize)))
    (local.set $vic2 (f64x2.splat (local.get $ic2)))
    (local.set $veps (f64x2.splat (local.get $eps)))
    (local.set $vdec (f64x2.splat (local.get $decay)))
    (local.set $pairs (i32.shl (i32.shr_u (local.get $count) (i32.const 1)) (i32.const 1)))
    (block $done
      (loop $body
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (if (i32.lt_u (local.get $i) (local.get $pairs))
          (then
            (local.set $gv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $g) (local.get $at)))))
            (local.set $mv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $m) (local.get $at)))))
            (local.set $vv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $v) (local.get $at)))))
            (local.set $pv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $p) (local.get $at))))))
          (else
            (local.set $gv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $g) (local.get $at)))))
            (local.set $mv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $m) (local.get $at)))))
            (local.set $vv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $v) (local.get $at)))))
            (local.set $pv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $p) (local.get $at)))))))
        ;; the moments, rounded to float32 and used as such (as the reference stores and rereads them)
        (local.set $mv (f32x4.demote_f64x2_zero
          (f64x2.add (f64x2.mul (local.get $vb1) (local.get $mv)) (f64x2.mul (local.get $vk1) (local.get $gv)))))
        (local.set $vv (f32x4.demote_f64x2_zero
          (f64x2.add (f64x2.mul (local.get $vb2) (local.get $vv))
                     (f64x2.mul (f64x2.mul (local.get $vk2) (local.get $gv)) (local.get $gv)))))
        (local.set $pv (f32x4.demote_f64x2_zero
          (f64x2.sub
            (f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero (f64x2.mul (local.get $pv) (local.get $vdec))))
            (f64x2.div
              (f64x2.mul (local.get $vss) (f64x2.promote_low_f32x4 (local.get $mv)))
              (f64x2.add
                (f64x2.mul (f64x2.sqrt (f64x2.promote_low_f32x4 (local.get $vv))) (local.get $vic2))
                (local.get $veps))))))
        (if (i32.lt_u (local.get $i) (local.get $pairs))
          (then
            (v128.store64_lane 0 (i32.add (local.get $m) (local.get $at)) (local.get $mv))
            (v128.store64_lane 0 (i32.add (local.get $v) (local.get $at)) (local.get $vv))
            (v128.store64_lane 0 (i32.add (local.get $p) (local.get $at)) (local.get $pv)))
          (else
            (v128.store32_lane 0 (i32.add (local.get $m) (local.get $at)) (local.get $mv))
            (v128.store32_lane 0 (i32.add (local.get $v) (local.get $at)) (local.get $vv))
            (v128.store32_lane 0 (i32.add (local.get $p) (local.get $at)) (local.get $pv))))
        (local.set $i (i32.add (local.get $i) (i32.const 2)))
        (br $body))))

  ;; with momentum: b = f32(momentum·b + g); p = f32(f32(p·decay) − lr·b)
  (func (export "sgd_momentum")
    (param $p i32) (param $g i32) (param $b i32) (param $count i32)
    (param $momentum f64) (param $lr f64) (param $decay f64)
    (local $i i32) (local $at i32) (local $pairs i32)
    (local $vmom v128) (local $vlr v128) (local $vdec v128) (local $gv v128) (local $bv v128) (local $pv v128)
    (local.set $vmom (f64x2.splat (local.get $momentum)))
    (local.set $vlr (f64x2.splat (local.get $lr)))
    (local.set $vdec (f64x2.splat (local.get $decay)))
    (local.set $pairs (i32.shl (i32.shr_u (local.get $count) (i32.const 1)) (i32.const 1)))
    (block $done
      (loop $body
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (if (i32.lt_u (local.get $i) (local.get $pairs))
          (then
            (local.set $gv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $g) (local.get $at)))))
            (local.set $bv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $b) (local.get $at)))))
            (local.set $pv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $p) (local.get $at))))))
          (else
            (local.set $gv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $g) (local.get $at)))))
            (local.set $bv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $b) (local.get $at)))))
            (local.set $pv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $p) (local.get $at)))))))
        (local.set $bv (f32x4.demote_f64x2_zero
          (f64x2.add (f64x2.mul (local.get $vmom) (local.get $bv)) (local.get $gv))))
        (local.set $pv (f32x4.demote_f64x2_zero
          (f64x2.sub
            (f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero (f64x2.mul (local.get $pv) (local.get $vdec))))
            (f64x2.mul (local.get $vlr) (f64x2.promote_low_f32x4 (local.get $bv))))))
        (if (i32.lt_u (local.get $i) (local.get $pairs))
          (then
            (v128.store64_lane 0 (i32.add (local.get $b) (local.get $at)) (local.get $bv))
            (v128.store64_lane 0 (i32.add (local.get $p) (local.get $at)) (local.get $pv)))
          (else
            (v128.store32_lane 0 (i32.add (local.get $b) (local.get $at)) (local.get $bv))
            (v128.store32_lane 0 (i32.add (local.get $p) (local.get $at)) (local.get $pv))))
        (local.set $i (i32.add (local.get $i) (i32.const 2)))
        (br $body))))

  ;; without momentum: p = f32(f32(p·decay) − lr·g)
  (func (export "sgd")
    (param $p i32) (param $g i32) (param $count i32) (param $lr f64) (param $decay f64)
    (local $i i32) (local $at i32) (local $pairs i32)
    (local $vlr v128) (local $vdec v128) (local $gv v128) (local $pv v128)
    (local.set $vlr (f64x2.splat (local.get $lr)))
    (local.set $vdec (f64x2.splat (local.get $decay)))
    (local.set $pairs (i32.shl (i32.shr_u (local.get $count) (i32.const 1)) (i32.const 1)))
    (block $done
      (loop $body
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (if (i32.lt_u (local.get $i) (local.get $pairs))
          (then
            (local.set $gv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $g) (local.get $at)))))
            (local.set $pv (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $p) (local.get $at))))))
          (else
            (local.set $gv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $g) (local.get $at)))))
            (local.set $pv (f64x2.promote_low_f32x4 (v128.load32_zero (i32.add (local.get $p) (local.get $at)))))))
        (local.set $pv (f32x4.demote_f64x2_zero
          (f64x2.sub
            (f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero (f64x2.mul (local.get $pv) (local.get $vdec))))
            (f64x2.mul (local.get $vlr) (local.get $gv)))))
        (if (i32.lt_u (local.get $i) (local.get $pairs))
          (then (v128.store64_lane 0 (i32.add (local.get $p) (local.get $at)) (local.get $pv)))
          (else (v128.store32_lane 0 (i32.add (local.get $p) (local.get $at)) (local.get $pv))))
        (local.set $i (i32.add (local.get $i) (i32.const 2)))
        (br $body))))
)
