/*
 * LD_PRELOAD shim that makes this process and its children see an AVX2-only x86-64 CPU (Haswell, Zen 2/3):
 * CPUID reports no AVX-512, no AVX-VNNI and no AMX, while everything else is passed through. Libraries that
 * choose kernels from CPUID at run time (ONNX Runtime's MLAS, OpenBLAS, PyTorch's ATen and cpuinfo) then
 * run their AVX2 kernels, natively and at full speed, on a machine that also has AVX-512.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, 0; the `cpuid_fault` flag in /proc/cpuinfo)
 * turns every CPUID instruction into a SIGSEGV; the handler below runs the real CPUID with faulting briefly
 * off, clears the masked bits and steps over the instruction. The setting is per thread, inherited by
 * threads and forks, and reset by execve (LD_PRELOAD sets it up again there). Every other SIGSEGV goes on
 * to the program's own handler: `sigaction` is interposed so that a program installing a SIGSEGV handler
 * (Node does, for V8's WebAssembly bounds checks, without keeping the previous one) sets the handler this
 * one passes on to, instead of replacing it.
 *
 * Limits: the dynamic loader reads CPUID before this runs, so glibc's own string functions are masked with
 * GLIBC_TUNABLES instead (bench/lib/isa-mask.ts sets both), and `xgetbv` still reports the AVX-512 state
 * as enabled — harmless, since software checks the CPUID feature bit first.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

#define BIT(n) (1u << (n))

/* Leaf 7, subleaf 0. EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL. */
static const unsigned LEAF7_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
/* ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ. */
static const unsigned LEAF7_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
/* EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8. */
static const unsigned LEAF7_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
/* Leaf 7, subleaf 1. EAX: AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA. EDX: AVX_VNNI_INT8, AVX_NE_CONVERT, AVX10. */
static const unsigned LEAF7_1_EAX = BIT(4) | BIT(5) | BIT(21) | BIT(23);
static const unsigned LEAF7_1_EDX = BIT(4) | BIT(5) | BIT(19);

/* The program's own SIGSEGV disposition, as it last set it through sigaction. */
static struct sigaction previous;
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static long set_cpuid_faulting(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void masked_cpuid(unsigned leaf, unsigned subleaf, unsigned r[4]) {
  __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
  if (leaf == 7 && subleaf == 0) {
    r[1] &= ~LEAF7_EBX;
    r[2] &= ~LEAF7_ECX;
    r[3] &= ~LEAF7_EDX;
  } else if (leaf == 7 && subleaf == 1) {
    r[0] &= ~LEAF7_1_EAX;
    r[3] &= ~LEAF7_1_EDX;
  } else if (leaf == 0x24) {
    r[0] = r[1] = r[2] = r[3] = 0; /* AVX10 converged vector ISA leaf */
  }
}

static void pass_on(int sig, siginfo_t *info, void *context) {
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(sig, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
  } else {
    /* Re-executing the faulting instruction with the default action gives the usual crash and core. */
    struct sigaction default_action;
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    real_sigaction(sig, &default_action, NULL);
  }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
  ucontext_t *uc = context;
  greg_t *regs = uc->uc_mcontext.gregs;
  /* CPUID faulting raises a general-protection fault: SI_KERNEL, unlike page faults (SEGV_MAPERR/ACCERR),
     so the instruction pointer is known to be readable before it is read. */
  const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
  if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
    pass_on(sig, info, context);
    return;
  }
  int saved_errno = errno;
  unsigned r[4];
  set_cpuid_faulting(0);
  masked_cpuid((unsigned)regs[REG_RAX], (unsigned)regs[REG_RCX], r);
  set_cpuid_faulting(1);
  errno = saved_errno;
  regs[REG_RAX] = r[0];
  regs[REG_RBX] = r[1];
  regs[REG_RCX] = r[2];
  regs[REG_RDX] = r[3];
  regs[REG_RIP] += 2;
}

int sigaction(int sig, const struct sigaction *action, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV) return real_sigaction(sig, action, old);
  if (old) *old = previous;
  if (action) previous = *action;
  return 0;
}

__attribute__((constructor)) static void install(void) {
  real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_segv;
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  if (!real_sigaction || real_sigaction(SIGSEGV, &action, &previous) != 0 || set_cpuid_faulting(1) != 0) {
    fprintf(stderr, "melo isa mask: this CPU or kernel cannot fault on CPUID (arch_prctl ARCH_SET_CPUID: %s)\n",
            strerror(errno));
    _exit(2);
  }
  setenv("MELO_ISA_MASK_ACTIVE", "avx2", 1);
}
