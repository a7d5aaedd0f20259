#!/bin/sh
# lancache client setup (Linux, macOS): makes this machine trust the LAN cache's own CA, so an
# unmodified `ollama pull` (which verifies TLS) can be served by the cache once DNS points the
# registry's name at it. Then restarts the ollama service, if there is one, so it reloads the
# trust store.
#
#   curl -fsSL http://CACHE/setup.sh | sudo sh                     install (or update) the CA
#   curl -fsSL http://CACHE/setup.sh | sudo sh -s -- --uninstall   remove it again
#
# lancached fills in its own URL and the CA's SHA-256 fingerprint when it serves this file; the
# downloaded CA is installed only if its fingerprint matches. Running it twice changes nothing.
#
# Environment (for tests and packagers): LANCACHE_SETUP_ROOT=DIR installs below DIR instead of
# / and restarts no service; the store is refreshed only in a Debian-like DIR (one with
# etc/ca-certificates.conf), by the real update-ca-certificates pointed at DIR's directories.
# LANCACHE_SETUP_OS=debian|fedora|arch|macos skips detection.
set -eu

DEFAULT_URL='@@LANCACHE_URL@@'
DEFAULT_SHA256='@@LANCACHE_CA_SHA256@@'
NAME=lancache-ca
ROOT=${LANCACHE_SETUP_ROOT:-}
KEYCHAIN=/Library/Keychains/System.keychain

usage() {
	cat <<EOF
Usage: setup.sh [--uninstall] [--url URL] [--sha256 HEX]

Installs the lancache CA into the system trust store (Debian/Ubuntu: update-ca-certificates;
Fedora/RHEL and Arch: update-ca-trust; macOS: the System keychain) and restarts the ollama
service.

  --uninstall    remove the CA from the system trust store
  --url URL      the cache's base URL (default: ${DEFAULT_URL})
  --sha256 HEX   the CA certificate's expected SHA-256 fingerprint
  -h, --help     this help
EOF
}

say() { printf 'lancache: %s\n' "$*"; }
die() {
	printf 'lancache: error: %s\n' "$*" >&2
	exit 1
}


detect_os() {
	if [ -n "${LANCACHE_SETUP_OS:-}" ]; then
		echo "$LANCACHE_SETUP_OS"
	elif [ "$(uname -s)" = Darwin ]; then
		echo macos
	elif [ -d "$ROOT/etc/pki/ca-trust/source/anchors" ]; then
		echo fedora
	elif [ -d "$ROOT/etc/ca-certificates/trust-source/anchors" ]; then
		echo arch
	elif [ -d "$ROOT/usr/local/share/ca-certificates" ] || command -v update-ca-certificates >/dev/null 2>&1; then
		echo debian
	else
		echo unknown
	fi
}

# Lower-case hex SHA-256 of stdin.
sha256_stdin() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum | cut -d ' ' -f 1
	else
		shasum -a 256 | cut -d ' ' -f 1
	fi
}

# The fingerprint of the PEM certificate in $1: SHA-256 over its DER bytes.
cert_sha256() {
	if command -v openssl >/dev/null 2>&1; then
		openssl x509 -in "$1" -outform DER | sha256_stdin
	else
		sed -e '1,/-----BEGIN CERTIFICATE-----/d' -e '/-----END CERTIFICATE-----/,$d' "$1" |
			base64 -d | sha256_stdin
	fi
}

fetch() {
	# An https URL is the cache's own certificate, which this machine does not trust yet: the
	# fingerprint check below is what authenticates the download.
	insecure=""
	case $1 in https://*) insecure=1 ;; esac
	if command -v curl >/dev/null 2>&1; then
		curl -fsSL ${insecure:+--insecure} -o "$2" "$1"
	elif command -v wget >/dev/null 2>&1; then
		wget -q ${insecure:+--no-check-certificate} -O "$2" "$1"
	else
		die "neither curl nor wget is installed"
	fi
}

download_ca() {
	case $url in
	@@*) die "no cache URL: fetch this script from the cache (curl -fsSL http://CACHE/setup.sh) or pass --url" ;;
	http://* | https://*) ;;
	*) die "--url must start with http:// or https:// (got: $url)" ;;
	esac
	case $sha in
	@@*) die "no CA fingerprint to check against: fetch this script from the cache, or pass --sha256 (lancachectl ca --json shows it)" ;;
	esac
	tmp=$(mktemp "${TMPDIR:-/tmp}/lancache-ca.XXXXXX")
	trap 'rm -f "$tmp"' EXIT
	fetch "${url%/}/ca.crt" "$tmp" || die "cannot download ${url%/}/ca.crt"
	[ "$(grep -c -- '-----BEGIN CERTIFICATE-----' "$tmp")" = 1 ] ||
		die "${url%/}/ca.crt is not a single PEM certificate"
	got=$(cert_sha256 "$tmp") || die "cannot compute the certificate's fingerprint"
	want=$(printf '%s' "$sha" | tr 'A-F' 'a-f' | tr -d ':')
	[ "$got" = "$want" ] ||
		die "the CA from ${url%/}/ca.crt has fingerprint $got, expected $want: not installing (rotated CA? fetch setup.sh again)"
	say "downloaded the cache's CA (sha256 $got)"
}

restart_ollama() {
	if [ -n "$ROOT" ]; then
		say "test root: not restarting services"
		return 0
	fi
	case $os in
	macos)
		# Go verifies through the keychain on macOS, but a Homebrew service is restarted anyway
		# so nothing holds an old answer.
		for domain in system "gui/${SUDO_UID:-$(id -u)}"; do
			if launchctl print "$domain/homebrew.mxcl.ollama" >/dev/null 2>&1; then
				launchctl kickstart -k "$domain/homebrew.mxcl.ollama" && say "restarted ollama ($domain)"
			fi
		done
		;;
	*)
		# Go reads the CA bundle once per process: the running service must be restarted.
		if [ -d /run/systemd/system ] && systemctl cat ollama.service >/dev/null 2>&1; then
			systemctl try-restart ollama.service && say "restarted the ollama service"
		else
			say "no ollama service found; restart any running 'ollama serve' so it reloads the CA bundle"
		fi
		;;
	esac
}

refresh_store() {
	if [ -n "$ROOT" ]; then
		say "test root: not running $1"
		return 0
	fi
	"$@" >/dev/null || die "$* failed"
}

debian_refresh() {
	# --fresh after a removal: a plain run leaves the old symlink in /etc/ssl/certs behind.
	fresh=""
	[ "$action" = uninstall ] && fresh=--fresh
	if [ -n "$ROOT" ] && [ -f "$ROOT/etc/ca-certificates.conf" ]; then
		# A test root laid out like Debian's: the real tool, pointed at the root's directories.
		update-ca-certificates $fresh --certsconf "$ROOT/etc/ca-certificates.conf" \
			--certsdir "$ROOT/usr/share/ca-certificates" \
			--localcertsdir "$ROOT/usr/local/share/ca-certificates" \
			--etccertsdir "$ROOT/etc/ssl/certs" \
			--hooksdir "$ROOT/etc/ca-certificates/update.d" >/dev/null ||
			die "update-ca-certificates failed"
		return 0
	fi
	refresh_store update-ca-certificates $fresh
}

# Installs or removes $tmp as the file $1, then runs the rest of the args (the store's refresh).
file_store() {
	dest=$1
	shift
	if [ "$action" = install ]; then
		if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
			say "the CA is already installed in $dest"
			changed=0
		else
			mkdir -p "$(dirname "$dest")"
			cp "$tmp" "$dest"
			chmod 0644 "$dest"
			say "installed the CA as $dest"
			changed=1
		fi
	elif [ -f "$dest" ]; then
		rm -f "$dest"
		say "removed $dest"
		changed=1
	else
		say "the CA is not installed ($dest absent)"
		changed=0
	fi
	# Always refresh: cheap, and repairs a store whose last refresh was interrupted.
	"$@"
}

macos_hashes() {
	# SHA-1 hashes of every lancache CA in the System keychain (there may be rotated ones).
	security find-certificate -a -Z -c "lancache CA" "$KEYCHAIN" 2>/dev/null |
		awk '/^SHA-1 hash:/ { print $3 }'
}

macos_store() {
	if [ "$action" = install ]; then
		want_upper=$(printf '%s' "$got" | tr 'a-f' 'A-F')
		if security find-certificate -a -Z -c "lancache CA" "$KEYCHAIN" 2>/dev/null |
			grep -q "SHA-256 hash: $want_upper"; then
			say "the CA is already trusted in $KEYCHAIN"
			changed=0
		else
			security add-trusted-cert -d -r trustRoot -k "$KEYCHAIN" "$tmp" ||
				die "security add-trusted-cert failed"
			say "added the CA to $KEYCHAIN as a trusted root"
			changed=1
		fi
	else
		changed=0
		for h in $(macos_hashes); do
			security delete-certificate -Z "$h" "$KEYCHAIN" >/dev/null && changed=1
		done
		if [ "$changed" = 1 ]; then say "removed the CA from $KEYCHAIN"; else say "the CA is not installed"; fi
	fi
}

# Python clients (huggingface_hub, transformers, pip) trust certifi's bundle, not the system
# store: point them at the system bundle (which now holds the CA) from every login shell.
python_env() {
	bundle=$1
	profile="$ROOT/etc/profile.d/lancache-python.sh"
	if [ "$action" = uninstall ]; then
		[ -f "$profile" ] && rm -f "$profile" && say "removed $profile"
		return 0
	fi
	mkdir -p "$(dirname "$profile")" || die "cannot create $(dirname "$profile")"
	printf '# lancache: Python clients trust the system store (with the cache CA) too\nexport SSL_CERT_FILE=%s\nexport REQUESTS_CA_BUNDLE=%s\n' "$bundle" "$bundle" >"$profile" ||
		die "cannot write $profile"
	chmod 644 "$profile"
	say "Python clients (huggingface_hub): wrote $profile; in this shell run"
	say "  export SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle"
}

# Everything runs from here, called on the last line: a download cut short runs nothing.
main() {
	action=install
	url=$DEFAULT_URL
	sha=$DEFAULT_SHA256
	while [ $# -gt 0 ]; do
		case $1 in
		--uninstall) action=uninstall ;;
		--url)
			[ $# -ge 2 ] || die "--url needs a value"
			url=$2
			shift
			;;
		--url=*) url=${1#--url=} ;;
		--sha256)
			[ $# -ge 2 ] || die "--sha256 needs a value"
			sha=$2
			shift
			;;
		--sha256=*) sha=${1#--sha256=} ;;
		-h | --help)
			usage
			exit 0
			;;
		*)
			usage >&2
			die "unknown option: $1"
			;;
		esac
		shift
	done

	if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
		die "run as root, e.g.: curl -fsSL ${url}/setup.sh | sudo sh"
	fi

	os=$(detect_os)
	[ "$action" = install ] && download_ca
	case $os in
	debian)
		file_store "$ROOT/usr/local/share/ca-certificates/$NAME.crt" debian_refresh
		python_env /etc/ssl/certs/ca-certificates.crt
		;;
	fedora)
		file_store "$ROOT/etc/pki/ca-trust/source/anchors/$NAME.crt" refresh_store update-ca-trust extract
		python_env /etc/pki/tls/certs/ca-bundle.crt
		;;
	arch)
		file_store "$ROOT/etc/ca-certificates/trust-source/anchors/$NAME.crt" refresh_store update-ca-trust extract
		python_env /etc/ssl/certs/ca-certificates.crt
		;;
	macos)
		[ -z "$ROOT" ] || die "LANCACHE_SETUP_ROOT is not supported for macOS"
		macos_store
		[ "$action" = install ] && say "Python clients (huggingface_hub) trust certifi, not the keychain: export SSL_CERT_FILE and REQUESTS_CA_BUNDLE to a PEM bundle holding ${url%/}/ca.crt"
		;;
	*)
		die "unknown system: add the CA (${url%/}/ca.crt) to its trust store by hand, or use 'ollama pull --insecure' with DNS only"
		;;
	esac
	[ "$changed" = 1 ] && restart_ollama
	say "done"
}

main "$@"
