# lancache side-loader for Windows (PowerShell 5.1+): copies Ollama models from a lancache server
# on your LAN into this machine's Ollama models directory, without touching the internet.
#
#   & ([scriptblock]::Create((irm http://CACHE/install.ps1))) llama3:8b qwen2.5:1.5b
#   & ([scriptblock]::Create((irm http://CACHE/install.ps1))) -List
#   irm http://CACHE/install.ps1 | iex      (then: $env:LANCACHE_MODELS = 'llama3:8b' first)
#
# Mirrors install.sh: every blob is sha256-checked, downloads resume, blobs are moved into
# blobs\ only when verified, and the manifest is written last.
[CmdletBinding(PositionalBinding = $false)]
param(
    [Parameter(Position = 0, ValueFromRemainingArguments = $true)][string[]]$Models,
    [switch]$List,
    [string]$Server = '',
    [string]$Dir = '',
    [switch]$Help
)
$ErrorActionPreference = 'Stop'
# The progress bar slows Invoke-WebRequest down by orders of magnitude on PowerShell 5.1.
$ProgressPreference = 'SilentlyContinue'

$DefaultServer = '@LANCACHE_URL@'
if (-not $Server) { $Server = $env:LANCACHE_URL }
if (-not $Server) { $Server = $DefaultServer }
if (-not $Models -and $env:LANCACHE_MODELS) { $Models = $env:LANCACHE_MODELS -split '[ ,]+' }

# Errors throw rather than `exit`: under `& ([scriptblock]::Create(...))` an exit would close the
# user's PowerShell window; a throw stops the script with a red message (and exit code 1 under -File).
function Fail([string]$msg) { throw "install.ps1: error: $msg" }

if ($Help -or (-not $List -and -not $Models)) {
    @"
Usage: install.ps1 [-Server URL] [-Dir DIR] MODEL...
       install.ps1 -List

Installs Ollama models from a lancache server into this machine's Ollama models directory
(default: `$env:OLLAMA_MODELS, else ~\.ollama\models). MODEL is any name form Ollama accepts:
llama3, llama3:8b, user/model:tag, hf.co/user/repo:Q4_K_M.
"@ | Write-Host
    if ($Help) { return }
    Fail 'no model named (see above)'

}
if ($Server -notmatch '^https?://') { Fail 'no cache server known: pass -Server http://CACHE' }
$Server = $Server.TrimEnd('/')

# GET url (into -OutFile when given: bytes unchanged); HTTP errors throw with the server's message.
function Get-Text([string]$url, [string]$outFile = '') {
    try {
        if ($outFile) { Invoke-WebRequest -UseBasicParsing -Uri $url -OutFile $outFile; return }
        return (Invoke-WebRequest -UseBasicParsing -Uri $url).Content
    } catch [System.Net.WebException] {
        $r = $_.Exception.Response
        if ($null -eq $r) { Fail "cannot reach the cache at ${Server}: $($_.Exception.Message)" }
        $code = [int]$r.StatusCode
        $body = (New-Object System.IO.StreamReader($r.GetResponseStream())).ReadToEnd()
        throw "HTTP ${code}: $body"
    }
}

if ($List) {
    $text = Get-Text "$Server/api/models?format=text"
    if (-not $text) { Write-Host "the cache at $Server has no models yet"; return }
    '{0,-50} {1,-12} {2,10}  {3}' -f 'NAME', 'ID', 'SIZE', 'STATUS'
    foreach ($line in ($text -split "`n")) {
        if (-not $line) { continue }
        $f = $line -split "`t"
        '{0,-50} {1,-12} {2,7:N1} GB  {3}' -f $f[0], $f[2], ([double]$f[3] / 1e9), $f[4]
    }
    return
}

if (-not $Dir) { $Dir = $env:OLLAMA_MODELS }
if (-not $Dir) { $Dir = Join-Path $HOME '.ollama\models' }
$Part = Join-Path $Dir '.lancache-partial'
foreach ($d in @((Join-Path $Dir 'blobs'), (Join-Path $Dir 'manifests'), $Part)) {
    New-Item -ItemType Directory -Force -Path $d | Out-Null
}

function Get-Sha256([string]$path) { (Get-FileHash -Algorithm SHA256 -LiteralPath $path).Hash.ToLowerInvariant() }

# Downloads url into path, continuing a partial file with a Range request.
function Save-Resumable([string]$url, [string]$path) {
    $have = 0
    if (Test-Path -LiteralPath $path) { $have = (Get-Item -LiteralPath $path).Length }
    $req = [System.Net.HttpWebRequest]::Create($url)
    if ($have -gt 0) { $req.AddRange([long]$have) }
    try { $resp = $req.GetResponse() } catch [System.Net.WebException] {
        $r = $_.Exception.Response
        if ($null -eq $r) { Fail "cannot reach the cache at ${Server}: $($_.Exception.Message)" }
        if ([int]$r.StatusCode -eq 416) { return }
        Fail "$url answered HTTP $([int]$r.StatusCode)"
    }
    $mode = if ([int]$resp.StatusCode -eq 206) { [System.IO.FileMode]::Append } else { [System.IO.FileMode]::Create }
    $in = $resp.GetResponseStream()
    $out = New-Object System.IO.FileStream($path, $mode, [System.IO.FileAccess]::Write)
    try { $in.CopyTo($out, 1MB) } catch [System.IO.IOException] { Fail "cannot write ${path}: $($_.Exception.Message) (disk full?)" }
    finally { $out.Close(); $in.Close(); $resp.Close() }
}

$status = 0
foreach ($name in $Models) {
    # [scheme://][host/][namespace/]model[:tag], as Ollama parses it.
    $n = $name -replace '^[a-z]+://', ''
    $tag = 'latest'
    $last = ($n -split '/')[-1]
    if ($last.Contains(':')) { $tag = $last.Substring($last.LastIndexOf(':') + 1); $n = $n.Substring(0, $n.LastIndexOf(':')) }
    $p = $n -split '/'
    switch ($p.Count) {
        1 { $hostName = 'registry.ollama.ai'; $ns = 'library'; $model = $p[0] }
        2 { $hostName = 'registry.ollama.ai'; $ns = $p[0]; $model = $p[1] }
        3 { $hostName = $p[0].ToLowerInvariant(); $ns = $p[1]; $model = $p[2] }
        default { Fail "invalid model name '$name'" }
    }
    foreach ($c in @($hostName, $ns, $model, $tag)) {
        if ($c -notmatch '^[A-Za-z0-9._:-]+$' -or $c -eq '.' -or $c -eq '..') { Fail "invalid model name '$name'" }
    }
    $full = "$hostName/$ns/${model}:$tag"
    Write-Host $full
    $mtmp = Join-Path $Part "manifest-$PID"
    try { Get-Text "$Server/manifests/$full" $mtmp; $manifest = [System.IO.File]::ReadAllText($mtmp) } catch {
        Write-Host "install.ps1: error: ${name}: $($_.Exception.Message)" -ForegroundColor Red
        $status = 1; continue
    }
    $hexes = [regex]::Matches($manifest, 'sha256:([0-9a-f]{64})') | ForEach-Object { $_.Groups[1].Value } | Sort-Object -Unique
    foreach ($hex in $hexes) {
        $final = Join-Path $Dir "blobs\sha256-$hex"
        if ((Test-Path -LiteralPath $final) -and ((Get-Sha256 $final) -eq $hex)) { Write-Host "  sha256:$($hex.Substring(0,12)) already present"; continue }
        $tmp = Join-Path $Part "sha256-$hex"
        $ok = $false
        foreach ($attempt in 1, 2) {
            Write-Host "  sha256:$($hex.Substring(0,12)) downloading"
            Save-Resumable "$Server/blobs/sha256:$hex" $tmp
            if ((Get-Sha256 $tmp) -eq $hex) { Move-Item -Force -LiteralPath $tmp -Destination $final; $ok = $true; break }
            Remove-Item -Force -LiteralPath $tmp
        }
        if (-not $ok) { Fail "blob sha256:$hex failed its sha256 check twice" }
    }
    $mdir = Join-Path $Dir "manifests\$hostName\$ns\$model"
    New-Item -ItemType Directory -Force -Path $mdir | Out-Null
    # The bytes exactly as served (the model ID is their sha256), moved in last.
    Move-Item -Force -LiteralPath $mtmp -Destination (Join-Path $mdir $tag)
    Write-Host "installed $name into $Dir"
}
if ($status) { Fail 'some models could not be installed (see above)' }
