; Inno Setup 6 script: the Windows installer of the one-folder bundle in dist\tokentrace.
; Built by installers\windows\build.ps1 (which passes /DAppVersion=...). Installs per user by
; default (no administrator rights needed); IT can install for all users from the same file.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif

[Setup]
AppId={{6B3F2A9E-4C1D-4E8B-9A57-2D0C8E1F7A31}
AppName=TokenTrace
AppVersion={#AppVersion}
AppPublisher=TokenTrace
AppComments=Offline token-level attribution for clinical language-model answers
DefaultDirName={autopf}\TokenTrace
DefaultGroupName=TokenTrace
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
SourceDir=..\..
OutputDir=dist
OutputBaseFilename=TokenTrace-{#AppVersion}-windows-x64-setup
SetupIconFile=build\tokentrace.ico
UninstallDisplayIcon={app}\TokenTrace.exe
Compression=lzma2/normal
SolidCompression=yes
WizardStyle=modern
; Add {app} to the user's PATH so `tokentrace explain ...` works in a terminal.
ChangesEnvironment=yes

[Tasks]
Name: "desktopicon"; Description: "Create a desktop shortcut"; Flags: unchecked
Name: "addtopath"; Description: "Add the tokentrace command to PATH"

[Files]
Source: "dist\tokentrace\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\TokenTrace"; Filename: "{app}\TokenTrace.exe"
Name: "{group}\Uninstall TokenTrace"; Filename: "{uninstallexe}"
Name: "{autodesktop}\TokenTrace"; Filename: "{app}\TokenTrace.exe"; Tasks: desktopicon

[Registry]
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; \
  ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\TokenTrace.exe"; Description: "Open TokenTrace"; Flags: nowait postinstall skipifsilent

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Path: string;
begin
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Path) then
    Result := True
  else
    Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;
