# Cross build for 64-bit Arm Linux with Debian's gcc-aarch64-linux-gnu and the multiarch arm64
# -dev packages (tools/cross_aarch64.sh installs them). Tests run under qemu's user-mode
# emulator: ctest prefixes every test whose command is a built target with it.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# Debian multiarch: the arm64 libraries live in /usr/lib/aarch64-linux-gnu, which find_library
# searches first for this architecture (and the cross gcc links from); headers are shared.

# No -L /usr/aarch64-linux-gnu: the multiarch libc6:arm64 (installed with the -dev packages)
# provides /lib/ld-linux-aarch64.so.1, and with the cross sysroot as qemu's prefix instead,
# pthread_create never returned (qemu 7.2, glibc 2.36): every threaded test hung.
find_program(KILN_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64 REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${KILN_QEMU_AARCH64})
