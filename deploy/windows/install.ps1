<#
.SYNOPSIS
    Installs, enrolls and starts the syncfleet agent as a Windows service, or removes it.

.DESCRIPTION
    Run from an elevated PowerShell in the folder holding syncfleet-agent.exe and
    agent.sample.toml (the MSI puts all three in %ProgramFiles%\syncfleet\). Safe to run again:
    each step is skipped when it is already done.

    1. Creates %ProgramData%\syncfleet\agent\ (configuration and data folder) with an explicit
       access list, not inherited from %ProgramData%: full control for SYSTEM, Administrators
       and the service account, nobody else.
    2. Writes agent.toml there from agent.sample.toml when it does not exist (an existing
       agent.toml is never overwritten).
    3. Installs the service: syncfleet-agent.exe service install --account ... --config ...
    4. Enrolls with the controller (syncfleet-agent.exe enroll) when not enrolled yet, and gives
       the service account access to the files enroll wrote.
    5. Starts the service when it is not running.

    -Uninstall stops and removes the service; the data folder (key, certificate, journal,
    configuration) is kept unless -RemoveData is given too.

.EXAMPLE
    .\install.ps1 -Controller https://controller.example.com:7443 -Token <id>.<secret> -CaPin sha256:<hex> -Name sync-01

.EXAMPLE
    .\install.ps1 -Uninstall -RemoveData
#>
[CmdletBinding()]
param(
    # One-time enrollment token from 'syncfleet tokens create' (needed only to enroll).
    [string] $Token,
    # SHA-256 of the controller's CA, as printed by 'syncfleet tokens create'.
    [string] $CaPin,
    # Controller gRPC URL, https://host:port.
    [string] $Controller,
    # Agent name the token was created for; default: this computer's name in lower case.
    [string] $Name = $env:COMPUTERNAME.ToLowerInvariant(),
    # Account the service runs as: a virtual account (default), or a gMSA such as
    # 'CONTOSO\svc-syncfleet$'. It needs the engine's operator group (FIMSyncOperators, or
    # ADSyncOperators on Entra Connect).
    [string] $Account = 'NT SERVICE\syncfleet-agent',
    # Stop and remove the service.
    [switch] $Uninstall,
    # With -Uninstall: also delete %ProgramData%\syncfleet\agent\ (key, journal, configuration).
    [switch] $RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$ServiceName = 'syncfleet-agent'
$Exe = Join-Path $PSScriptRoot 'syncfleet-agent.exe'
$Sample = Join-Path $PSScriptRoot 'agent.sample.toml'
$ProgramData = if ($env:ProgramData) { $env:ProgramData } else { 'C:\ProgramData' }
$DataDir = Join-Path $ProgramData 'syncfleet\agent'
$ConfigPath = Join-Path $DataDir 'agent.toml'
# Well-known SIDs, so that the rules do not depend on the system's language.
$System = '*S-1-5-18'
$Administrators = '*S-1-5-32-544'

function Say([string] $Message) {
    Write-Host "install.ps1: $Message"
}

# Runs syncfleet-agent.exe with the given arguments; stops with its output when it fails.
function Invoke-Agent([string[]] $Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "syncfleet-agent.exe $($Arguments[0..1] -join ' ') failed with exit code $LASTEXITCODE (see the message above)"
    }
}

# Runs icacls; stops when it fails (its reason is printed above). Its standard error is not
# redirected: Windows PowerShell would turn the first line into a terminating error.
function Invoke-Icacls([string[]] $Arguments) {
    & icacls.exe @Arguments | Out-Null
    if ($LASTEXITCODE -ne 0) {
        throw "icacls $($Arguments -join ' ') failed with exit code $LASTEXITCODE (see the message above)"
    }
}

function Get-AgentService {
    Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
}

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'install.ps1 must run in an elevated PowerShell (Run as administrator): it installs a service and sets access rules under %ProgramData%.'
}
if (-not (Test-Path -LiteralPath $Exe -PathType Leaf)) {
    throw "syncfleet-agent.exe is not next to install.ps1 ($Exe): run install.ps1 from the folder the zip was extracted to or the MSI installed (%ProgramFiles%\syncfleet\)."
}

if ($Uninstall) {
    $service = Get-AgentService
    if ($null -eq $service) {
        Say "the service $ServiceName is not installed"
    } else {
        if ($service.Status -ne 'Stopped') {
            Say "stopping the service $ServiceName"
            Invoke-Agent @('service', 'stop')
        }
        Say "removing the service $ServiceName"
        Invoke-Agent @('service', 'uninstall')
    }
    if ($RemoveData) {
        if (Test-Path -LiteralPath $DataDir) {
            Say "deleting $DataDir (key, certificate, journal, configuration)"
            Remove-Item -LiteralPath $DataDir -Recurse -Force
        }
    } elseif (Test-Path -LiteralPath $DataDir) {
        Say "kept $DataDir (add -RemoveData to delete it)"
    }
    Say 'uninstalled'
    return
}

# 1. The configuration and data folder: SYSTEM and Administrators now, the service account
#    once the service (and so a virtual account) exists.
if (-not (Test-Path -LiteralPath $DataDir -PathType Container)) {
    Say "creating $DataDir"
    New-Item -ItemType Directory -Path $DataDir -Force | Out-Null
}
Invoke-Icacls @($DataDir, '/inheritance:r', '/grant:r', "${System}:(OI)(CI)F", "${Administrators}:(OI)(CI)F")

# 2. The configuration, never overwritten.
if (Test-Path -LiteralPath $ConfigPath) {
    Say "keeping the existing $ConfigPath"
} else {
    if (-not (Test-Path -LiteralPath $Sample -PathType Leaf)) {
        throw "agent.sample.toml is not next to install.ps1 ($Sample)"
    }
    Say "writing $ConfigPath from agent.sample.toml"
    Copy-Item -LiteralPath $Sample -Destination $ConfigPath
}

# 3. The service.
if ($null -eq (Get-AgentService)) {
    Say "installing the service $ServiceName (account $Account)"
    Invoke-Agent @('service', 'install', '--account', $Account, '--config', $ConfigPath)
} else {
    Say "the service $ServiceName is already installed"
}

# The service account gets the folder and every file in it (the key carries its own protected
# access list, written by the agent, so it is granted explicitly).
function Grant-ServiceAccount {
    Invoke-Icacls @($DataDir, '/grant:r', "${Account}:(OI)(CI)F")
    Get-ChildItem -LiteralPath $DataDir -File | ForEach-Object {
        Invoke-Icacls @($_.FullName, '/grant:r', "${Account}:F")
    }
}
Grant-ServiceAccount

# 4. Enrollment, once.
$enrolled = (Test-Path -LiteralPath (Join-Path $DataDir 'enrolled.toml')) -and
    (Test-Path -LiteralPath (Join-Path $DataDir 'agent.key')) -and
    (Test-Path -LiteralPath (Join-Path $DataDir 'agent.pem'))
if ($enrolled) {
    Say "already enrolled (enrolled.toml, agent.key and agent.pem are in $DataDir)"
} else {
    $missing = @()
    if (-not $Token) { $missing += '-Token' }
    if (-not $CaPin) { $missing += '-CaPin' }
    if (-not $Controller) { $missing += '-Controller' }
    if ($missing.Count -gt 0) {
        throw "this server is not enrolled yet: give $($missing -join ', ') (from 'syncfleet tokens create --agent $Name' on an operator's machine)"
    }
    Say "enrolling $Name with $Controller"
    # The token goes through the environment, not the command line other users can see.
    $env:SYNCFLEET_ENROLL_TOKEN = $Token
    try {
        Invoke-Agent @('enroll', '--config', $ConfigPath, '--controller', $Controller, '--ca-pin', $CaPin, '--name', $Name)
    } finally {
        Remove-Item Env:\SYNCFLEET_ENROLL_TOKEN -ErrorAction SilentlyContinue
    }
    Grant-ServiceAccount
}

# 5. Running.
$service = Get-AgentService
if ($null -ne $service -and $service.Status -eq 'Running') {
    Say "the service $ServiceName is already running"
} else {
    Say "starting the service $ServiceName"
    Invoke-Agent @('service', 'start')
}
Say "done: $ServiceName runs as $Account; configuration $ConfigPath; data $DataDir"
