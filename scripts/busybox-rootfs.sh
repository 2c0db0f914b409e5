#!/bin/sh
# Makes a tiny base image rootfs tar from Debian's busybox-static: /bin/busybox, the links
# `busybox --install -s` makes, /etc/passwd and /etc/group with root and nobody, /tmp 1777.
# Usage: scripts/busybox-rootfs.sh OUT.tar
set -eu
out=${1:?usage: $0 OUT.tar}
if [ ! -x /bin/busybox ] && [ ! -x /usr/bin/busybox ]; then
  echo "busybox not found: apt-get install -y busybox-static" >&2; exit 1
fi
bb=$( [ -x /usr/bin/busybox ] && echo /usr/bin/busybox || echo /bin/busybox )
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/home" "$dir/usr/bin" "$dir/sbin" "$dir/usr/sbin" "$dir/var"
cp "$bb" "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list-full 2>/dev/null || "$dir/bin/busybox" --list | sed 's|^|bin/|'); do
  case "$applet" in bin/busybox) continue ;; esac
  mkdir -p "$dir/$(dirname "$applet")"
  [ -e "$dir/$applet" ] || ln -s /bin/busybox "$dir/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
chmod 1777 "$dir/tmp"
chmod 700 "$dir/root"
tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf "$out" .
