"""Profiles of the AWS config and credentials files (real files in a temporary HOME), as
botocore reads them: the config file's sections, the two files merged, what a profile gives
and in which order, assumed roles and their sources, IAM Identity Center profiles, and the
configuration errors that name the profile, the key and the file."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from failoverd.awscreds import (
    AssumeRole,
    AwsConfigError,
    AwsCredentials,
    ContainerEndpoint,
    CredentialProcess,
    InstanceMetadata,
    SharedFile,
    SsoRole,
    choose_source,
    open_source,
)
from failoverd.awsprofiles import sso_cache_key
from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient

NO_IMDS = {"AWS_EC2_METADATA_DISABLED": "true"}
ROLE = "arn:aws:iam::123456789012:role/bedrock-invoke"


def home(tmp_path: Path, config: str = "", credentials: str = "") -> dict[str, str]:
    """A HOME with ~/.aws/config and ~/.aws/credentials; the environment naming it."""
    aws = tmp_path / ".aws"
    aws.mkdir(exist_ok=True)
    if config:
        (aws / "config").write_text(config)
    if credentials:
        (aws / "credentials").write_text(credentials)
    return {"HOME": str(tmp_path), **NO_IMDS}


def keys(key: str = "AKIASTATIC", secret: str = "static-secret") -> str:
    return f"aws_access_key_id = {key}\naws_secret_access_key = {secret}\n"


def _err(env: dict[str, str], profile: str = "", **kw: str) -> str:
    with pytest.raises(AwsConfigError) as err:
        choose_source(env, profile, **kw)
    return str(err.value)


# ------------------------------------------------------------------ the config file


async def test_config_file_profiles_and_default(tmp_path: Path, http_client: HttpClient) -> None:
    env = home(tmp_path, config="[default]\nregion = eu-west-1\n" + keys("AKIADEFAULT") +
               '[profile "team bedrock"]\n' + keys("AKIATEAM", "team-secret") +
               "[prod]\n" + keys("AKIANOTAPROFILE"))
    config = str(tmp_path / ".aws" / "config")
    assert choose_source(env) == SharedFile(config, "default")
    found = choose_source(env, "team bedrock")
    assert found == SharedFile(config, "team bedrock", 'profile "team bedrock"')
    creds = await open_source(found, client=http_client, clock=ManualClock()).get()
    assert creds == AwsCredentials("AKIATEAM", "team-secret")
    # a section without "profile " is no profile in the config file (botocore ignores it)
    assert "has no [profile prod]" in _err(env, "prod")
    # AWS_CONFIG_FILE moves it
    other = tmp_path / "other.ini"
    other.write_text("[profile x]\n" + keys("AKIAOTHER"))
    assert choose_source({**env, "AWS_CONFIG_FILE": str(other)}, "x") == \
        SharedFile(str(other), "x", "profile x")


def test_profile_default_section_later_wins(tmp_path: Path) -> None:
    env = home(tmp_path, config="[default]\n" + keys("AKIAFIRST") +
               "[profile default]\ncredential_process = " + sys.executable + " -V\n")
    # botocore: the later of [default] and [profile default] is the default profile; its
    # keys are gone and the process serves
    found = choose_source(env)
    assert isinstance(found, CredentialProcess) and found.command == (sys.executable, "-V")
    # the other way round: the keys, and no process (the sections are not merged)
    (tmp_path / ".aws" / "config").write_text(
        "[profile default]\ncredential_process = " + sys.executable + " -V\n[default]\n" +
        keys("AKIASECOND"))
    assert choose_source(env) == SharedFile(str(tmp_path / ".aws" / "config"), "default")
    (tmp_path / ".aws" / "config").write_text(
        "[profile default]\n" + keys("AKIAFIRST") + "[default]\nregion = us-east-1\n")
    assert "has no credentials" in _err(env)


def test_files_merged_credentials_file_wins(tmp_path: Path) -> None:
    env = home(tmp_path,
               config=f"[profile app]\nrole_arn = {ROLE}\nsource_profile = base\n"
                      "region = eu-central-1\n[profile base]\n" + keys("AKIACONFIG"),
               credentials="[base]\n" + keys("AKIACREDS") + "[app]\nregion = us-west-2\n")
    found = choose_source(env, "app")
    assert isinstance(found, AssumeRole)
    # the credentials file's keys of [base], over the config file's
    assert found.source == SharedFile(str(tmp_path / ".aws" / "credentials"), "base")
    # and its region over the config file's (the provider's region is not given here)
    assert (found.region, found.endpoint) == ("us-west-2", "https://sts.us-west-2.amazonaws.com")


def test_what_a_profile_gives_in_botocores_order(tmp_path: Path) -> None:
    process = f"credential_process = {sys.executable} helper.py\n"
    creds_path = str(tmp_path / ".aws" / "credentials")
    config_path = str(tmp_path / ".aws" / "config")
    env = home(tmp_path,
               config=f"[profile role]\nrole_arn = {ROLE}\nsource_profile = role\n" + process +
               "[profile proc]\n" + process + keys("AKIACONFIGKEYS") +
               "[profile both]\n" + process,
               credentials="[role]\n" + keys("AKIAROLEKEYS") + "[both]\n" + keys("AKIAFILE"))
    # role_arn first, whatever else is there; a profile may be its own source with its keys
    role = choose_source(env, "role")
    assert isinstance(role, AssumeRole) and role.source == SharedFile(creds_path, "role")
    # the credentials file's keys before credential_process ...
    assert choose_source(env, "both") == SharedFile(creds_path, "both")
    # ... and credential_process before the config file's keys
    proc = choose_source(env, "proc")
    assert isinstance(proc, CredentialProcess) and proc.command == (sys.executable, "helper.py")
    assert proc.profile == "proc" and "helper.py" not in repr(proc)
    del config_path


def test_the_default_profile_that_gives_nothing_is_passed_over(tmp_path: Path) -> None:
    env = home(tmp_path, config="[default]\nregion = us-east-1\n")
    assert "has no credentials" in _err(env)
    env.pop("AWS_EC2_METADATA_DISABLED")
    assert choose_source(env) == InstanceMetadata()
    # named, it is an error that says so
    message = _err({**env, **NO_IMDS}, "default")
    assert message.startswith("profile [default] (") and "gives no credentials" in message


def test_a_named_profile_that_is_nowhere(tmp_path: Path) -> None:
    env = home(tmp_path, config="[profile a]\n" + keys(), credentials="[b]\n" + keys())
    message = _err(env, "missing")
    assert message.startswith(f"{tmp_path}/.aws/credentials has no profile [missing] with "
                              "aws_access_key_id and aws_secret_access_key; "
                              f"{tmp_path}/.aws/config has no [profile missing]"), message
    assert "aws_profile" in message
    assert "AWS_PROFILE" in _err({**env, "AWS_PROFILE": "missing"})


def test_aws_default_profile_names_the_profile_when_aws_profile_does_not(
        tmp_path: Path) -> None:
    env = home(tmp_path, credentials="[a]\n" + keys() + "[b]\n" + keys())
    creds_path = f"{tmp_path}/.aws/credentials"
    assert choose_source({**env, "AWS_DEFAULT_PROFILE": "a"}) == SharedFile(creds_path, "a")
    # both set: AWS_PROFILE first, as the AWS CLI reads them
    assert choose_source({**env, "AWS_DEFAULT_PROFILE": "a", "AWS_PROFILE": "b"}) == \
        SharedFile(creds_path, "b")
    # a profile it names that is not there is an error naming the variable
    message = _err({**env, "AWS_DEFAULT_PROFILE": "missing"})
    assert "AWS_DEFAULT_PROFILE" in message and "[missing]" in message


# ------------------------------------------------------------------ assumed roles


def test_assume_role_keys_and_defaults(tmp_path: Path) -> None:
    env = home(tmp_path, config=f"[profile r]\nrole_arn = {ROLE}\nsource_profile = base\n"
               "external_id = partner-42\nrole_session_name = bedrock@failoverd\n"
               "duration_seconds = 1800\n",
               credentials="[base]\n" + keys())
    found = choose_source(env, "r", region="eu-west-3")
    assert found == AssumeRole("r", ROLE, SharedFile(str(tmp_path / ".aws" / "credentials"),
                                                     "base"),
                               "eu-west-3", "https://sts.eu-west-3.amazonaws.com",
                               "partner-42", "bedrock@failoverd", 1800)
    assert "partner-42" not in repr(found)
    # endpoints: the service's variable, else the global one; ignored when told to
    sts = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    assert choose_source(sts, "r").endpoint == "http://127.0.0.1:9"
    sts["AWS_ENDPOINT_URL_STS"] = "http://127.0.0.1:8/"
    assert choose_source(sts, "r").endpoint == "http://127.0.0.1:8"  # type: ignore[union-attr]
    sts["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true"
    assert choose_source(sts, "r", region="cn-north-1").endpoint == \
        "https://sts.cn-north-1.amazonaws.com.cn"  # type: ignore[union-attr]
    # without a region anywhere, us-east-1; AWS_REGION before AWS_DEFAULT_REGION
    assert choose_source(env, "r").region == "us-east-1"  # type: ignore[union-attr]
    assert choose_source({**env, "AWS_DEFAULT_REGION": "ap-south-1", "AWS_REGION":
                          "sa-east-1"}, "r").region == "sa-east-1"  # type: ignore[union-attr]
    # the environment's over the profile's (botocore's order); the provider's over both
    (tmp_path / ".aws" / "config").write_text(
        f"[profile r]\nrole_arn = {ROLE}\nsource_profile = base\nregion = eu-north-1\n")
    assert choose_source(env, "r").region == "eu-north-1"  # type: ignore[union-attr]
    assert choose_source({**env, "AWS_DEFAULT_REGION": "ap-south-1"},
                         "r").region == "ap-south-1"  # type: ignore[union-attr]
    assert choose_source({**env, "AWS_DEFAULT_REGION": "ap-south-1"}, "r",
                         region="us-west-1").region == "us-west-1"  # type: ignore[union-attr]


def test_chained_roles_and_loops(tmp_path: Path) -> None:
    creds_path = str(tmp_path / ".aws" / "credentials")
    env = home(tmp_path, config=(
        f"[profile a]\nrole_arn = {ROLE}-a\nsource_profile = b\n"
        f"[profile b]\nrole_arn = {ROLE}-b\nsource_profile = c\n"
        "[profile c]\n" + keys("AKIAC") +
        f"[profile loop1]\nrole_arn = {ROLE}\nsource_profile = loop2\n"
        f"[profile loop2]\nrole_arn = {ROLE}\nsource_profile = loop1\n"
        f"[profile self]\nrole_arn = {ROLE}\nsource_profile = self\n"
        f"[profile withkeys]\nrole_arn = {ROLE}-w\nsource_profile = withkeys\n" + keys("AKIAW") +
        f"[profile viakeys]\nrole_arn = {ROLE}-v\nsource_profile = withkeys\n"
        f"[profile proc]\nrole_arn = {ROLE}-p\nsource_profile = runner\n"
        f"[profile runner]\ncredential_process = {sys.executable} x.py\n"
        f"[profile empty]\nrole_arn = {ROLE}\nsource_profile = nothing\n"
        "[profile nothing]\nregion = us-east-1\n"
        f"[profile gone]\nrole_arn = {ROLE}\nsource_profile = nowhere\n"),
        credentials="[c]\n" + keys("AKIACFILE"))
    config = f"{tmp_path}/.aws/config"
    found = choose_source(env, "a")
    assert isinstance(found, AssumeRole) and found.role_arn == f"{ROLE}-a"
    inner = found.source
    assert isinstance(inner, AssumeRole) and inner.role_arn == f"{ROLE}-b"
    assert inner.source == SharedFile(creds_path, "c")
    # named where the loop closes
    assert _err(env, "loop1") == (f"profile [loop2] ({config}): source_profile makes a loop: "
                                  "loop1 -> loop2 -> loop1")
    assert _err(env, "self") == (f"profile [self] ({config}): source_profile makes a loop: "
                                 "self -> self")
    # a source profile with keys gives them, its own role_arn aside (botocore's rule)
    assert choose_source(env, "withkeys").source == \
        SharedFile(config, "withkeys", "profile withkeys")  # type: ignore[union-attr]
    assert choose_source(env, "viakeys").source == \
        SharedFile(config, "withkeys", "profile withkeys")  # type: ignore[union-attr]
    source = choose_source(env, "proc").source  # type: ignore[union-attr]
    assert isinstance(source, CredentialProcess) and source.profile == "runner"
    assert _err(env, "empty") == (f"profile [empty] ({config}): source_profile names profile "
                                  "[nothing], which gives no credentials (no keys, "
                                  "credential_process, role_arn, web_identity_token_file or "
                                  "sso_* keys)")
    assert _err(env, "gone") == (f"profile [gone] ({config}): source_profile names profile "
                                 "[nowhere], which is in neither file")


def test_credential_source(tmp_path: Path) -> None:
    env = home(tmp_path, config="".join(
        f"[profile {name}]\nrole_arn = {ROLE}\ncredential_source = {name}\n"
        for name in ("Environment", "Ec2InstanceMetadata", "EcsContainer", "Somewhere")))
    env.pop("AWS_EC2_METADATA_DISABLED")
    full = {**env, "AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:7/creds"}
    # named in the configuration, the profile is used over the environment's keys, which
    # then sign its AssumeRole
    assert choose_source(full, "Environment").source == \
        AwsCredentials("AKIAENV", "env-secret")  # type: ignore[union-attr]
    assert choose_source(full, "Ec2InstanceMetadata").source == \
        InstanceMetadata()  # type: ignore[union-attr]
    assert choose_source(full, "EcsContainer").source == \
        ContainerEndpoint("http://127.0.0.1:7/creds")  # type: ignore[union-attr]
    config = f"{tmp_path}/.aws/config"
    assert _err(env, "Environment") == (
        f"profile [Environment] ({config}): credential_source is Environment, but "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
    assert "neither AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" in _err(env, "EcsContainer")
    assert "AWS_EC2_METADATA_DISABLED=true" in _err({**env, **NO_IMDS}, "Ec2InstanceMetadata")
    assert _err(env, "Somewhere") == (
        f"profile [Somewhere] ({config}): credential_source is 'Somewhere': it must be one of "
        "Environment, Ec2InstanceMetadata, EcsContainer")


@pytest.mark.parametrize(("profile", "message"), [
    (f"role_arn = {ROLE}\nsource_profile = base\nmfa_serial = arn:aws:iam::1:mfa/me\n",
     "mfa_serial is set: a role that wants an MFA code cannot be assumed by a daemon"),
    (f"role_arn = {ROLE}\nsource_profile = base\ncredential_source = Environment\n",
     "role_arn has both source_profile and credential_source: keep one"),
    (f"role_arn = {ROLE}\n", "role_arn needs source_profile or credential_source"),
    ("role_arn = bedrock-invoke\nsource_profile = base\n", "role_arn is not a role ARN"),
    (f"role_arn = {ROLE}\nsource_profile = base\nduration_seconds = 60\n",
     "duration_seconds must be a whole number of seconds from 900 to 43200, got '60'"),
    (f"role_arn = {ROLE}\nsource_profile = base\nduration_seconds = 1h\n",
     "duration_seconds must be a whole number"),
    (f"role_arn = {ROLE}\nsource_profile = base\nrole_session_name = has space\n",
     "role_session_name must be 2 to 64 letters"),
    ("web_identity_token_file = /var/run/token\n",
     "role_arn is missing: web_identity_token_file needs the role to assume"),
    (f"role_arn = {ROLE}\nweb_identity_token_file = /t\nrole_session_name = has space\n",
     "role_session_name must be 2 to 64 letters"),
    (f"role_arn = {ROLE}\nweb_identity_token_file = /t\nduration_seconds = 60\n",
     "duration_seconds must be a whole number of seconds from 900 to 43200, got '60'"),
    (f"role_arn = {ROLE}\nsource_profile = wid\n",
     "[wid]: role_arn is not a role ARN: 'x'"),
    ("credential_process = /nonexistent/helper --profile x\n",
     "credential_process runs /nonexistent/helper, which is not an executable file"),
    ("credential_process = no-such-helper-anywhere\n",
     "credential_process runs no-such-helper-anywhere, which is not on PATH"),
    ("credential_process = 'unterminated\n", "credential_process cannot be split"),
])
def test_profile_problems_name_the_profile_and_key(tmp_path: Path, profile: str,
                                                   message: str) -> None:
    env = home(tmp_path, config="[profile p]\n" + profile + "[profile base]\n" + keys() +
               "[profile wid]\nweb_identity_token_file = /t\nrole_arn = x\n")
    got = _err(env, "p")
    name = "wid" if "[wid]" in message else "p"
    assert got.startswith(f"profile [{name}] ({tmp_path}/.aws/config): "), got
    assert message.removeprefix("[wid]: ") in got, got


# ------------------------------------------------------------------ IAM Identity Center


def test_sso_profiles(tmp_path: Path) -> None:
    env = home(tmp_path, config=(
        "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n"
        "sso_role_name = BedrockUser\nregion = us-west-2\n"
        "[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n"
        "sso_region = eu-west-1\nsso_registration_scopes = sso:account:access\n"
        "[profile legacy]\nsso_start_url = https://d-90670ab1c2.awsapps.com/start\n"
        "sso_region = us-east-1\nsso_account_id = 444455556666\nsso_role_name = Reader\n"))
    cache = tmp_path / ".aws" / "sso" / "cache"
    assert choose_source(env, "dev") == SsoRole(
        "dev", "111122223333", "BedrockUser", "https://corp.awsapps.com/start", "eu-west-1",
        "corp", str(cache / (hashlib.sha1(b"corp").hexdigest() + ".json")),
        "https://portal.sso.eu-west-1.amazonaws.com", "https://oidc.eu-west-1.amazonaws.com")
    legacy = choose_source(env, "legacy")
    assert isinstance(legacy, SsoRole) and legacy.session == "" and legacy.oidc_endpoint == ""
    assert os.path.basename(legacy.cache) == \
        hashlib.sha1(b"https://d-90670ab1c2.awsapps.com/start").hexdigest() + ".json"
    assert sso_cache_key("", "https://d-90670ab1c2.awsapps.com/start") + ".json" == \
        os.path.basename(legacy.cache)
    moved = choose_source({**env, "AWS_ENDPOINT_URL_SSO": "http://127.0.0.1:5"}, "dev")
    assert isinstance(moved, SsoRole) and moved.endpoint == "http://127.0.0.1:5"


@pytest.mark.parametrize(("profile", "message"), [
    ("sso_session = corp\nsso_account_id = 1\n",
     "sso_role_name is missing: the profile uses IAM Identity Center (SSO), which needs "
     "sso_role_name (sso_start_url and sso_region may be in [sso-session corp])"),
    ("sso_session = nope\nsso_account_id = 1\nsso_role_name = R\n",
     "sso_session names [sso-session nope], which "),
    ("sso_session = corp\nsso_account_id = 1\nsso_role_name = R\n"
     "sso_start_url = https://other.awsapps.com/start\n",
     "sso_start_url differs from [sso-session corp]'s"),
    ("sso_start_url = https://x.awsapps.com/start\nsso_account_id = 1\n",
     "sso_region is missing: the profile uses IAM Identity Center (SSO), which needs "
     "sso_region, sso_role_name"),
    ("sso_start_url = https://x.awsapps.com/start\nsso_region = moon\nsso_account_id = 1\n"
     "sso_role_name = R\n", "sso_region is no AWS region: 'moon'"),
])
def test_sso_problems(tmp_path: Path, profile: str, message: str) -> None:
    env = home(tmp_path, config="[profile p]\n" + profile + "[sso-session corp]\n"
               "sso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\n")
    got = _err(env, "p")
    assert got.startswith(f"profile [p] ({tmp_path}/.aws/config): "), got
    assert message in got, got


def test_sso_without_home(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile p]\nsso_start_url = https://x.awsapps.com/start\n"
                      "sso_region = us-east-1\nsso_account_id = 1\nsso_role_name = R\n")
    got = _err({"AWS_CONFIG_FILE": str(config), **NO_IMDS}, "p")
    assert "needs the token cache of aws sso login in ~/.aws/sso/cache, but HOME is not set" \
        in got


def test_sources_fingerprint_and_hide_secrets(tmp_path: Path) -> None:
    """The configuration's fingerprint (statefile) takes the new sources, their hidden fields
    too; their repr shows no secret (the environment's key behind a role, an external id, a
    command's arguments)."""
    from failoverd import config
    from failoverd.fingerprint import fingerprint, new_salt

    env = home(tmp_path, config=(
        f"[profile r]\nrole_arn = {ROLE}\ncredential_source = Environment\n"
        "external_id = secret-external-id\n"
        f"[profile p]\ncredential_process = {sys.executable} --token=cmd-secret\n"))
    env.update(AWS_ACCESS_KEY_ID="AKIAENV", AWS_SECRET_ACCESS_KEY="env-secret-key")
    for profile in ("r", "p"):
        cfg = config.loads('[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\n'
                           f'aws_profile = "{profile}"\n[models."b/m"]\nprovider = "b"\n',
                           env=env)
        provider = cfg.providers["b"]
        salt = new_salt()
        assert fingerprint(salt, provider) == fingerprint(salt, provider)
        text = repr(provider) + repr(provider.aws)
        for secret in ("env-secret-key", "secret-external-id", "cmd-secret"):
            assert secret not in text
    role = choose_source(env, "r")
    salt = new_salt()
    other = choose_source({**env, "AWS_SECRET_ACCESS_KEY": "rotated"}, "r")
    assert fingerprint(salt, role) != fingerprint(salt, other)


def test_the_providers_region_picks_the_sts_endpoint(tmp_path: Path) -> None:
    from failoverd import config

    env = home(tmp_path, config=f"[profile r]\nrole_arn = {ROLE}\nsource_profile = base\n"
               "[profile base]\n" + keys())
    cfg = config.loads('[providers.b]\nkind = "bedrock"\nregion = "eu-west-3"\n'
                       'aws_profile = "r"\n[models."b/m"]\nprovider = "b"\n', env=env)
    source = cfg.providers["b"].aws
    assert isinstance(source, AssumeRole)
    assert source.endpoint == "https://sts.eu-west-3.amazonaws.com"
