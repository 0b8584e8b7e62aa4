# Cross build for 64-bit Arm Linux with Debian's gcc-aarch64-linux-gnu and the multiarch arm64
# -dev packages (tools/cross_aarch64.sh installs them). Tests run under qemu's user-mode
# emulator: ctest prefixes every test whose command is a built target with it.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# Debian multiarch: the arm64 libraries live in /usr/lib/aarch64-linux-gnu, which find_library
# searches first for this architecture (and the cross gcc links from); headers are shared.

find_program(KILN_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64 REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${KILN_QEMU_AARCH64} -L /usr/aarch64-linux-gnu)
