"""MinIO smoke tests: the real server through boto3."""

from __future__ import annotations


def test_put_get_list_round_trip(minio, bucket):
    s3 = minio.s3_client()
    s3.put_object(Bucket=bucket, Key="children/c0/arch.json", Body=b'{"layers": []}')
    s3.put_object(Bucket=bucket, Key="children/c1/arch.json", Body=b'{"layers": [1]}')
    s3.put_object(Bucket=bucket, Key="search.yaml", Body=b"name: s")

    body = s3.get_object(Bucket=bucket, Key="children/c1/arch.json")["Body"].read()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="children/")
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")

    assert body == b'{"layers": [1]}'
    assert sorted(item["Key"] for item in listed["Contents"]) == ["children/c0/arch.json", "children/c1/arch.json"]
    assert [prefix["Prefix"] for prefix in top["CommonPrefixes"]] == ["children/"]
    assert [item["Key"] for item in top["Contents"]] == ["search.yaml"]


def test_bucket_fixture_gives_a_fresh_empty_bucket(minio, bucket):
    s3 = minio.s3_client()
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert bucket in [entry["Name"] for entry in s3.list_buckets()["Buckets"]]


def test_wrong_credentials_are_refused(minio, bucket):
    import boto3
    import botocore.exceptions
    import pytest

    intruder = boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        aws_access_key_id="nobody",
        aws_secret_access_key="wrong-password",
        region_name=minio.region,
    )
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        intruder.list_objects_v2(Bucket=bucket)
    assert raised.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied")
