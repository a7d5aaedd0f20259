# lancache client setup (Windows, PowerShell 5.1+): makes this machine trust the LAN cache's own
# CA (Cert:\LocalMachine\Root), so an unmodified `ollama pull` (which verifies TLS) can be served
# by the cache once DNS points the registry's name at it.
#
# From an elevated PowerShell:
#   irm http://CACHE/setup.ps1 | iex                                  install (or update) the CA
#   & ([scriptblock]::Create((irm http://CACHE/setup.ps1))) -Uninstall   remove it again
#
# lancached fills in its own URL and the CA's SHA-256 fingerprint when it serves this file; the
# downloaded CA is imported only if its fingerprint matches. Running it twice changes nothing.
param(
    [switch]$Uninstall,
    [string]$Url = '@@LANCACHE_URL@@',
    [string]$Sha256 = '@@LANCACHE_CA_SHA256@@'
)

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Store = 'Cert:\LocalMachine\Root'
$SubjectPrefix = 'CN=lancache CA'

function Say([string]$Message) { Write-Host "lancache: $Message" }

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'lancache: run this from an elevated PowerShell (Run as administrator)'
}

function Restart-Ollama {
    # Go on Windows verifies through the system store, but a running server is restarted anyway so
    # nothing holds an old answer: the service if there is one, else the tray app's server.
    $svc = Get-Service -Name 'ollama' -ErrorAction SilentlyContinue
    if ($svc -and $svc.Status -eq 'Running') {
        Restart-Service -Name 'ollama'
        Say 'restarted the ollama service'
    } elseif (Get-Process -Name 'ollama' -ErrorAction SilentlyContinue) {
        Say 'ollama is running: quit and restart the Ollama app so it picks up the new CA'
    }
}

if ($Uninstall) {
    $found = @(Get-ChildItem -Path $Store | Where-Object { $_.Subject -like "*$SubjectPrefix*" })
    if ($found.Count -eq 0) {
        Say 'the CA is not installed'
        return
    }
    foreach ($cert in $found) {
        Remove-Item -Path (Join-Path $Store $cert.Thumbprint)
        Say "removed $($cert.Subject) ($($cert.Thumbprint))"
    }
    Restart-Ollama
    Say 'done'
    return
}

if ($Url.StartsWith('@@')) { throw 'lancache: no cache URL: fetch this script from the cache, or pass -Url' }
if ($Sha256.StartsWith('@@')) { throw 'lancache: no CA fingerprint: fetch this script from the cache, or pass -Sha256' }
if ($Url -notmatch '^https?://') { throw "lancache: -Url must start with http:// or https:// (got: $Url)" }

$tmp = [System.IO.Path]::GetTempFileName()
try {
    $caUrl = $Url.TrimEnd('/') + '/ca.crt'
    # An https URL presents the cache's own certificate, not trusted yet: the fingerprint check
    # below is what authenticates the download.
    if ($caUrl.StartsWith('https://')) {
        [System.Net.ServicePointManager]::ServerCertificateValidationCallback = { $true }
    }
    [System.Net.ServicePointManager]::SecurityProtocol = [System.Net.SecurityProtocolType]::Tls12
    Invoke-WebRequest -UseBasicParsing -Uri $caUrl -OutFile $tmp
    $cert = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2($tmp)
    $sha = [System.Security.Cryptography.SHA256]::Create()
    $got = (($sha.ComputeHash($cert.RawData) | ForEach-Object { $_.ToString('x2') }) -join '')
    $want = $Sha256.ToLowerInvariant().Replace(':', '')
    if ($got -ne $want) {
        throw "lancache: the CA from $caUrl has fingerprint $got, expected ${want}: not installing (rotated CA? fetch setup.ps1 again)"
    }
    Say "downloaded the cache's CA (sha256 $got)"
    if (Test-Path -Path (Join-Path $Store $cert.Thumbprint)) {
        Say "the CA is already trusted ($($cert.Subject))"
    } else {
        Import-Certificate -FilePath $tmp -CertStoreLocation $Store | Out-Null
        Say "added $($cert.Subject) to $Store"
        Restart-Ollama
    }
    Say 'done'
} finally {
    Remove-Item -Path $tmp -ErrorAction SilentlyContinue
}
