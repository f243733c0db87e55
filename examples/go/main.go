// Command client is the llmbridge example client in Go (grpc-go).
//
//  1. Streams a completion and prints the text as it arrives, then the usage.
//  2. Makes a call that fails (an unknown model) and prints the gRPC status
//     code and the ErrorInfo reason from the rich error details
//     (google.rpc.Status in the grpc-status-details-bin trailer).
//
// Usage: go run . [ADDRESS]   (default: $LLMBRIDGE_ADDRESS or 127.0.0.1:50051)
// With $LLMBRIDGE_TOKEN set, every call sends `authorization: Bearer <token>`
// (for a server started with --auth_token_file).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails" // registers ErrorInfo, RetryInfo
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/llmbridge/llmbridge/examples/go/llmbridgev1"
)

const timeout = 60 * time.Second

// callContext is a context with the call's deadline and, when
// $LLMBRIDGE_TOKEN is set, the bearer token as metadata. Over a plaintext
// connection the token crosses the network readable: use TLS beyond
// loopback or a pod.
func callContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	if token := os.Getenv("LLMBRIDGE_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx, cancel
}

func main() {
	log.SetFlags(0)
	address := os.Getenv("LLMBRIDGE_ADDRESS")
	if address == "" {
		address = "127.0.0.1:50051"
	}
	if len(os.Args) > 1 {
		address = os.Args[1]
	}

	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("connecting to %s: %v", address, err)
	}
	defer conn.Close()
	client := pb.NewLocalLLMClient(conn)

	if err := streamCompletion(client); err != nil {
		fmt.Println()
		printError(err)
		os.Exit(1)
	}
	if err := failingCall(client); err == nil {
		log.Fatal("the call with an unknown model succeeded")
	} else {
		printError(err)
	}
}

func streamCompletion(client pb.LocalLLMClient) error {
	fmt.Println("== Complete (streaming)")
	ctx, cancel := callContext()
	defer cancel()
	stream, err := client.Complete(ctx, &pb.CompleteRequest{
		Messages: []*pb.Message{{Role: "user", Content: "Say hello."}},
	})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Print(resp.GetContent()) // each text delta as it arrives
		if resp.GetDone() {
			u := resp.GetUsage()
			fmt.Printf("\nusage: input_tokens=%d output_tokens=%d total_tokens=%d\n",
				u.GetInputTokens(), u.GetOutputTokens(), u.GetTotalTokens())
			fmt.Printf("finish_reason: %s  model: %s\n", resp.GetFinishReason(), resp.GetModel())
		}
	}
}

func failingCall(client pb.LocalLLMClient) error {
	fmt.Println("== Complete with an unknown model (fails)")
	ctx, cancel := callContext()
	defer cancel()
	stream, err := client.Complete(ctx, &pb.CompleteRequest{
		Model:    "no-such-model",
		Messages: []*pb.Message{{Role: "user", Content: "Hi"}},
	})
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

func printError(err error) {
	st := status.Convert(err) // carries google.rpc.Status from the trailer
	fmt.Printf("code: %s\n", code.Code_name[int32(st.Code())])
	fmt.Printf("message: %s\n", st.Message())
	reason := "<none>"
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			reason = d.GetReason()
			fmt.Printf("domain: %s\n", d.GetDomain())
			keys := make([]string, 0, len(d.GetMetadata()))
			for k := range d.GetMetadata() {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			pairs := make([]string, len(keys))
			for i, k := range keys {
				pairs[i] = k + "=" + d.GetMetadata()[k]
			}
			fmt.Printf("metadata: %s\n", strings.Join(pairs, " "))
		case *errdetails.RetryInfo:
			fmt.Printf("retry after: %s\n", d.GetRetryDelay().AsDuration())
		}
	}
	fmt.Printf("reason: %s\n", reason)
}
