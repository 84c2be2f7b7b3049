# syncfleet ADSync host: started once by the agent's adsync driver, it imports the ADSync module
# and then answers one JSON request per line on standard input with one JSON line on standard
# output, until standard input closes.
#   request:  {"id": 7, "command": "Get-ADSyncScheduler", "args": {"Name": "value"}}
#   answer:   {"id": 7, "ok": [ ...the cmdlet's output objects... ]}
#         or: {"id": 7, "error": "message", "category": "PowerShell error category"}
# The first line written is {"ready": true, "version": "..."} once the module is loaded, or
# {"error": "...", "category": "..."} (and exit code 3) when it cannot be loaded.
# Only the cmdlets listed in $allowed are run; anything else is answered with an error.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$WarningPreference = 'SilentlyContinue'
$InformationPreference = 'SilentlyContinue'
# The protocol is pure ASCII; UTF-8 console encodings are a courtesy that a process without a
# console may refuse, which is harmless.
try {
    $utf8 = New-Object System.Text.UTF8Encoding $false
    [Console]::InputEncoding = $utf8
    [Console]::OutputEncoding = $utf8
} catch {
    $null = $_
}
# Windows PowerShell 5.1 otherwise writes some arrays as {"value": [...], "Count": n}.
Remove-TypeData System.Array -ErrorAction SilentlyContinue
$allowed = @(
    'Get-ADSyncConnector',
    'Get-ADSyncConnectorRunStatus',
    'Get-ADSyncRunProfileResult',
    'Invoke-ADSyncRunProfile',
    'Stop-ADSyncRunProfile',
    'Get-ADSyncScheduler',
    'Set-ADSyncScheduler'
)

# A connector object carries its whole configuration (schema, partitions, parameters): only what
# the driver reads is sent, as strings so that enumerations arrive by name on every PowerShell.
function Select-Connector($c) {
    [pscustomobject]@{
        Name = [string]$c.Name
        Identifier = [string]$c.Identifier
        ConnectorTypeName = [string]$c.ConnectorTypeName
        Type = [string]$c.Type
        RunProfiles = @(foreach ($p in @($c.RunProfiles)) {
            if ($null -eq $p) { continue }
            [pscustomobject]@{
                Name = [string]$p.Name
                RunSteps = @(foreach ($s in @($p.RunSteps)) {
                    if ($null -eq $s) { continue }
                    [pscustomobject]@{
                        Type = [string]$s.Type
                        TaskType = [string]$s.TaskType
                        StepType = [string]$s.StepType
                        PartitionName = [string]$s.PartitionName
                    }
                })
            }
        })
    }
}

# Answers are pure ASCII (every other character as a JSON \uXXXX escape), so the console's code
# page cannot garble them.
function Write-Answer($answer) {
    $json = ConvertTo-Json -InputObject $answer -Compress -Depth 6
    $json = [regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value })
    [Console]::Out.WriteLine($json)
    [Console]::Out.Flush()
}

try {
    Import-Module ADSync -ErrorAction Stop
    $module = Get-Module ADSync
    Write-Answer @{ ready = $true; version = [string]$module.Version }
} catch {
    Write-Answer @{ error = $_.Exception.Message; category = [string]$_.CategoryInfo.Category }
    exit 3
}

while ($true) {
    $line = [Console]::In.ReadLine()
    if ($null -eq $line) { break }
    if ($line.Trim().Length -eq 0) { continue }
    $id = $null
    try {
        $request = ConvertFrom-Json -InputObject $line
        $id = $request.id
        $command = [string]$request.command
        if ($allowed -notcontains $command) {
            throw "the syncfleet host does not run '$command'"
        }
        $params = @{}
        if ($null -ne $request.args) {
            foreach ($p in $request.args.PSObject.Properties) { $params[$p.Name] = $p.Value }
        }
        # Anything the cmdlet writes to the host or the pipeline is collected, never printed.
        $output = @(& $command @params)
        if ($command -eq 'Get-ADSyncConnector') {
            $output = @(foreach ($c in $output) { Select-Connector $c })
        }
        Write-Answer @{ id = $id; ok = $output }
    } catch {
        Write-Answer @{ id = $id; error = $_.Exception.Message; category = [string]$_.CategoryInfo.Category }
    }
}
